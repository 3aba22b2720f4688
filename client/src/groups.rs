//! Reaching a consumer group's coordinator, and the group admin operations.

use std::time::Duration;

use sluice_protocol::Reason;
use sluice_protocol::v1::consumer_groups_client::ConsumerGroupsClient;
use sluice_protocol::v1::reset_offsets_request::To;
use sluice_protocol::v1::{
    CommittedOffset, DeleteGroupRequest, DescribeGroupRequest, FindCoordinatorRequest,
    GroupDescription, GroupListing, ListGroupsRequest, ResetOffsetsRequest,
};
use tonic::transport::Channel;

use crate::connection::Client;
use crate::error::ClientError;

/// Attempts to reach a coordinator before a group call gives up (≈ 20 s with backoff).
const COORDINATOR_ATTEMPTS: u32 = 60;

/// Where a reset moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The log start.
    Earliest,
    /// The high watermark.
    Latest,
    /// This offset (moved into the log if outside it).
    Offset(u64),
    /// The first offset at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// Whether a group call should go to a (re-found) coordinator and be tried again.
pub(crate) fn retry_elsewhere(e: &ClientError) -> bool {
    matches!(
        e.reason(),
        Some(Reason::NotCoordinator | Reason::Unavailable)
    ) || (e.reason().is_none() && e.is_retriable())
}

/// The pause before attempt `attempt` (from 0) of a group call.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 * u64::from(attempt.min(10)))
}

impl Client {
    /// The channel to `group`'s coordinator, as a broker names it now.
    pub(crate) async fn coordinator(&self, group: &str) -> Result<Channel, ClientError> {
        let request = FindCoordinatorRequest {
            group: group.to_string(),
        };
        let mut last = None;
        // The bootstrap broker first, then any other known node.
        let mut candidates = vec![self.bootstrap_channel()];
        candidates.extend(self.metadata().nodes.iter().map(|a| self.channel_to(a)));
        for channel in candidates {
            match self
                .groups_client(channel)
                .find_coordinator(request.clone())
                .await
            {
                Ok(answer) => {
                    let address = answer.into_inner().address;
                    return Ok(self.channel_to(&address));
                }
                Err(status) => {
                    let e = ClientError::from(status);
                    if !e.is_retriable() {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Closed))
    }

    /// Runs `call` at `group`'s coordinator, finding it again and retrying while the
    /// answer is NOT_COORDINATOR or UNAVAILABLE (a coordinator moving or loading).
    pub(crate) async fn at_coordinator<T, F, Fut>(
        &self,
        group: &str,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(ConsumerGroupsClient<crate::connection::Rpc>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            let result = match self.coordinator(group).await {
                Ok(channel) => call(self.groups_client(channel))
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(ClientError::from),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if retry_elsewhere(&e) && attempt + 1 < COORDINATOR_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    if attempt % 10 == 0 {
                        let _ = self.refresh_metadata().await;
                    }
                }
                other => return other,
            }
        }
    }
}

impl crate::Admin {
    /// Every group of the cluster (each broker lists the groups it coordinates).
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        let client = self.client();
        let cluster = client.describe_cluster().await?;
        let mut groups = Vec::new();
        for node in cluster
            .nodes
            .iter()
            .filter(|n| n.alive || cluster.nodes.len() == 1)
        {
            let channel = client.channel_to(&node.address);
            let answer = client
                .groups_client(channel)
                .list_groups(ListGroupsRequest {})
                .await?;
            groups.extend(answer.into_inner().groups);
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        groups.dedup_by(|a, b| a.group == b.group);
        Ok(groups)
    }

    /// A group's members, assignments, committed offsets and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let request = DescribeGroupRequest {
            group: group.to_string(),
        };
        self.client()
            .at_coordinator(group, |mut c| {
                let r = request.clone();
                async move { c.describe_group(r).await }
            })
            .await
    }

    /// Moves a group's committed offsets of `topic` (every partition, or `partitions`);
    /// refused with GROUP_NOT_EMPTY while the group has members.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
        to: ResetTo,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let request = ResetOffsetsRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            to: Some(match to {
                ResetTo::Earliest => To::Earliest(true),
                ResetTo::Latest => To::Latest(true),
                ResetTo::Offset(o) => To::Offset(o),
                ResetTo::Timestamp(ts) => To::TimestampMs(ts),
            }),
        };
        let answer = self
            .client()
            .at_coordinator(group, |mut c| {
                let r = request.clone();
                async move { c.reset_offsets(r).await }
            })
            .await?;
        Ok(answer.offsets)
    }

    /// Deletes a group's committed offsets; refused while it has members.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let request = DeleteGroupRequest {
            group: group.to_string(),
        };
        self.client()
            .at_coordinator(group, |mut c| {
                let r = request.clone();
                async move { c.delete_group(r).await }
            })
            .await
            .map(|_| ())
    }
}
