//! Topic and cluster administration.

use std::collections::HashMap;

use sluice_protocol::v1::{
    AddPartitionsRequest, AlterTopicConfigRequest, ClusterDescription, CreateTopicRequest,
    DecommissionNodeRequest, DeleteTopicRequest, DescribeTopicRequest, ListTopicsRequest,
    ReassignPartitionRequest, TopicDescription,
};

use crate::connection::Client;
use crate::error::ClientError;

/// Admin operations. Each refreshes the client's metadata when it changes topics.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Creates a topic; returns once every partition has a leader.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: HashMap<String, String>,
    ) -> Result<TopicDescription, ClientError> {
        let request = CreateTopicRequest {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
        };
        let response = self
            .client
            .admin_client()
            .create_topic(request)
            .await?
            .into_inner();
        self.client.refresh_metadata().await?;
        response
            .topic
            .ok_or_else(|| ClientError::InvalidArgument("broker returned no topic".into()))
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.client
            .admin_client()
            .delete_topic(DeleteTopicRequest {
                name: name.to_string(),
            })
            .await?;
        self.client.refresh_metadata().await
    }

    /// Every topic.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>, ClientError> {
        Ok(self
            .client
            .admin_client()
            .list_topics(ListTopicsRequest {})
            .await?
            .into_inner()
            .topics)
    }

    /// One topic, with per-partition leader, offsets and size.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        Ok(self
            .client
            .admin_client()
            .describe_topic(DescribeTopicRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Sets and removes topic configs.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: HashMap<String, String>,
        delete: Vec<String>,
    ) -> Result<TopicDescription, ClientError> {
        let request = AlterTopicConfigRequest {
            name: name.to_string(),
            set,
            delete,
        };
        Ok(self
            .client
            .admin_client()
            .alter_topic_config(request)
            .await?
            .into_inner())
    }

    /// Grows a topic to `count` partitions.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: u32,
    ) -> Result<TopicDescription, ClientError> {
        let request = AddPartitionsRequest {
            name: name.to_string(),
            count,
        };
        let description = self
            .client
            .admin_client()
            .add_partitions(request)
            .await?
            .into_inner();
        self.client.refresh_metadata().await?;
        Ok(description)
    }

    /// Starts moving a partition to `replicas` (the first is the preferred leader); the
    /// answer shows the move as `target_replicas` until it is done.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u64],
    ) -> Result<TopicDescription, ClientError> {
        let request = ReassignPartitionRequest {
            topic: topic.to_string(),
            partition,
            replicas: replicas.to_vec(),
        };
        Ok(self
            .client
            .admin_client()
            .reassign_partition(request)
            .await?
            .into_inner())
    }

    /// Moves every replica off node `id` and retires it from the controller's voters;
    /// returns the partitions that move (as `TOPIC/PARTITION`).
    pub async fn decommission_node(&self, id: u64) -> Result<Vec<String>, ClientError> {
        let request = DecommissionNodeRequest { node_id: id };
        Ok(self
            .client
            .admin_client()
            .decommission_node(request)
            .await?
            .into_inner()
            .moved)
    }

    /// Nodes, controller, version and every topic.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription, ClientError> {
        self.client.describe_cluster().await
    }
}
