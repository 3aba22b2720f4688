//! The partitions a node hosts: opening the ones the metadata places here, closing and
//! deleting the ones it no longer lists, and answering which replica serves a request.

use super::*;

impl Node {
    /// Removes directories of topics and partitions the metadata does not place here:
    /// leftovers of a delete the previous process did not finish. Only with complete
    /// metadata (the controller has applied its whole log).
    pub(super) async fn sweep_leftovers(&self) {
        let metadata = self.metadata();
        let wanted = self.placed_here(&metadata).map(|(key, _, _)| key).collect();
        let data_dir = self.config.data_dir.clone();
        let swept =
            crate::blocking::run(move || partition_dir::sweep(&data_dir, &wanted, &[CLUSTER_DIR]))
                .await;
        match swept {
            Ok(Ok(removed)) => {
                for dir in removed {
                    tracing::warn!(dir = %dir.display(), "removed the directory of a deleted topic or partition");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping leftover directories failed"),
            Err(e) => tracing::warn!(error = %e, "sweeping leftover directories failed"),
        }
    }

    /// The partitions `metadata` places on this node, with their group ids and topics.
    pub(super) fn placed_here<'m>(
        &self,
        metadata: &'m Metadata,
    ) -> impl Iterator<Item = (PartitionKey, GroupId, &'m TopicMeta)> + 'm {
        let node_id = self.node_id();
        metadata.topics.values().flat_map(move |t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(move |(_, p)| p.hosted_by(node_id))
                .map(move |(i, p)| ((t.name.clone(), i as u32), p.group_id, t))
        })
    }

    /// The local replica of a partition, or why there is none.
    pub fn partition(&self, topic: &str, index: u32) -> Result<Arc<Partition>, BrokerError> {
        let key = (topic.to_string(), index);
        if let Some(p) = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if let Some(why) = p.storage_failure() {
                return Err(BrokerError::StorageFailed(format!(
                    "{}/{index} is offline: {why}",
                    quote(topic)
                )));
            }
            return Ok(Arc::clone(p));
        }
        let metadata = self.metadata();
        let meta = metadata
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        if index as usize >= meta.partitions.len() {
            return Err(BrokerError::UnknownPartition {
                topic: topic.to_string(),
                partition: index,
            });
        }
        if let Some(why) = self.offline_reason(&key) {
            return Err(BrokerError::StorageFailed(format!(
                "{}/{index} is offline: {why}",
                quote(topic)
            )));
        }
        let placed = &meta.partitions[index as usize];
        if !placed.hosted_by(self.node_id()) {
            // Another broker's partition: point the client at its leader.
            if let Some(leader) = placed.leader {
                return Err(BrokerError::NotLeader {
                    what: format!("{}/{index}", quote(topic)),
                    leader_hint: metadata.node_address(leader).map(str::to_string),
                });
            }
            return Err(BrokerError::Unavailable(format!(
                "{}/{index} has no known leader yet",
                quote(topic)
            )));
        }
        Err(BrokerError::Unavailable(format!(
            "{}/{index} is not open on this broker yet",
            quote(topic)
        )))
    }

    /// Why a partition placed here is offline, if it is.
    pub(super) fn offline_reason(&self, key: &PartitionKey) -> Option<String> {
        self.offline
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Why partition `index` of `topic` is offline on this broker, if it is.
    pub fn partition_offline(&self, topic: &str, index: u32) -> Option<String> {
        let key = (topic.to_string(), index);
        let open = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        match open {
            Some(p) => p.storage_failure().map(str::to_string),
            None => self.offline_reason(&key),
        }
    }

    pub(super) fn set_offline(&self, key: &PartitionKey, why: Option<String>) {
        let mut offline = self.offline.write().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(why) => {
                offline.insert(key.clone(), why);
            }
            None => {
                offline.remove(key);
            }
        }
    }

    /// Every partition this node hosts.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Waits until every partition of `topic` has a serving leader that the controller
    /// knows of, and the ones hosted here are open.
    pub async fn wait_topic_ready(&self, topic: &str) -> Result<(), BrokerError> {
        let node_id = self.node_id();
        let ready = || {
            let metadata = self.metadata();
            let Some(meta) = metadata.topics.get(topic) else {
                return false;
            };
            meta.partitions.iter().enumerate().all(|(i, p)| {
                p.leader.is_some()
                    && (!p.hosted_by(node_id)
                        || self
                            .partition(topic, i as u32)
                            .is_ok_and(|p| p.leader().is_some()))
            })
        };
        if wait_until(ready).await {
            return Ok(());
        }
        Err(BrokerError::Unavailable(format!(
            "partitions of {topic} did not elect leaders in time"
        )))
    }

    /// Waits (bounded) until every partition opened here has a serving leader, so that once
    /// a restarted broker says it is ready no acknowledged record looks missing.
    pub(super) async fn wait_partitions_serving(&self) {
        if !wait_until(|| self.partitions().iter().all(|p| p.leader().is_some())).await {
            tracing::warn!(
                "some partitions have no serving leader after {:?}; starting anyway",
                limits::PARTITION_READY_WAIT
            );
        }
    }

    pub(super) async fn reconcile_forever(self: Arc<Self>) {
        let mut metadata = self.metadata.clone();
        while metadata.changed().await.is_ok() {
            self.reconcile().await;
        }
    }

    /// Opens partitions the metadata places here and closes (and deletes) the ones it no
    /// longer lists.
    pub async fn reconcile(&self) {
        let _guard = self.reconciling.lock().await;
        let metadata = self.metadata();
        let wanted: BTreeMap<PartitionKey, (GroupId, &TopicMeta)> = self
            .placed_here(&metadata)
            .map(|(key, group_id, topic)| (key, (group_id, topic)))
            .collect();
        self.close_unwanted(&wanted).await;
        for (key, (group_id, topic)) in &wanted {
            let existing = self
                .partitions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .cloned();
            match existing {
                Some(p) => {
                    if let Ok(config) = self.topic_config(topic)
                        && config != p.config()
                        && let Err(e) = p.set_config(config)
                    {
                        tracing::warn!(topic = %key.0, partition = key.1, error = %e, "config change not applied");
                    }
                }
                None => match self.open_partition(key, *group_id, topic).await {
                    Ok(()) => self.set_offline(key, None),
                    Err(e) => {
                        tracing::error!(topic = %key.0, partition = key.1, error = %e, "cannot open partition");
                        if let BrokerError::StorageFailed(why) = e {
                            crate::metrics::partition_offline(&key.0, key.1);
                            self.set_offline(key, Some(why));
                        }
                    }
                },
            }
        }
    }

    pub(super) async fn close_unwanted(
        &self,
        wanted: &BTreeMap<PartitionKey, (GroupId, &TopicMeta)>,
    ) {
        let unwanted: Vec<(PartitionKey, Arc<Partition>)> = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, p)| wanted.get(*k).is_none_or(|(g, _)| *g != p.group.id))
            .map(|(k, p)| (k.clone(), Arc::clone(p)))
            .collect();
        self.offline
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| wanted.contains_key(k));
        let mut topics = BTreeSet::new();
        for (key, partition) in unwanted {
            partition.shutdown().await;
            self.groups.remove(partition.group.id);
            self.partitions
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            // Segment files go to the background deleter first: unlinking gigabytes at once
            // would stall every other partition's fsyncs (docs/storage.md).
            if let Ok(mut log) = partition.group.log.write()
                && let Err(e) = log.discard_files()
            {
                tracing::warn!(dir = %partition.group.dir.display(), error = %e, "cannot hand segments to the deleter");
            }
            match partition_dir::remove_partition_dir(&partition.group.dir) {
                Ok(()) => self.remove_leftover_files(&partition.group.dir),
                Err(e) => {
                    tracing::warn!(dir = %partition.group.dir.display(), error = %e, "cannot remove partition data");
                }
            }
            topics.insert(key.0);
        }
        for topic in topics {
            // Removes the topic directory once its last partition is gone.
            let _ = std::fs::remove_dir(self.config.data_dir.join(&topic));
        }
    }

    /// Removes what is left under a removed partition directory's name on the log's `Io`:
    /// nothing on a real disk (the directory is gone), but under simulation the logs, votes
    /// and checkpoints live on the simulated disk, which the directory's removal does not
    /// reach; a replica moved back later must not find them.
    fn remove_leftover_files(&self, dir: &std::path::Path) {
        for name in self.io.list_dir(dir).unwrap_or_default() {
            let _ = self.io.remove_file(&dir.join(name));
        }
    }

    pub(super) async fn open_partition(
        &self,
        key: &PartitionKey,
        group_id: GroupId,
        topic: &TopicMeta,
    ) -> Result<(), BrokerError> {
        let config = self.topic_config(topic)?;
        let dir = partition_dir::partition_dir(&self.config.data_dir, &key.0, key.1);
        let identity = PartitionIdentity {
            topic: key.0.clone(),
            partition: key.1,
            group_id,
        };
        let prepare_dir = dir.clone();
        let prepared =
            crate::blocking::run(move || partition_dir::prepare(&prepare_dir, &identity))
                .await
                .map_err(|e| BrokerError::Internal(e.to_string()))?
                .map_err(|e| {
                    BrokerError::StorageFailed(format!("preparing {}: {e}", dir.display()))
                })?;
        if let Prepared::ReplacedStale(stale) = &prepared {
            tracing::warn!(topic = %key.0, partition = key.1, ?stale, "removed a deleted incarnation's leftover directory");
        }
        let replicas = topic
            .partitions
            .get(key.1 as usize)
            .map(|p| p.replicas.clone())
            .unwrap_or_default();
        // A replica being added by a reassignment starts empty and uninitialised: the
        // group's leader adds it as a learner and sends it the log.
        let members = if replicas.contains(&self.node_id()) {
            self.group_members(&replicas)?
        } else {
            BTreeMap::new()
        };
        let (high_watermark_tx, high_watermark) = watch::channel(0);
        let spec = GroupSpec {
            node_id: self.node_id(),
            node_address: self.address.clone(),
            group_id,
            kind: GroupKind::Partition,
            dir: &dir,
            log_config: config.log.clone(),
            io: Arc::clone(&self.io),
            clock: Arc::clone(&self.clock),
            members,
            elect: replicas.first() == Some(&self.node_id()),
            snapshots: SnapshotSchedule::for_kind(GroupKind::Partition),
            timing: self.config.raft_timing,
        };
        let (group, sm, report) = start_group(
            spec,
            |log| PartitionState::new(log, high_watermark_tx),
            Arc::clone(&self.peers),
        )
        .await
        .map_err(|e| BrokerError::StorageFailed(e.to_string()))?;
        tracing::info!(topic = %key.0, partition = key.1, ?report, "partition log recovered");
        if report.segments_scanned > 0 {
            crate::metrics::recovered();
        }
        self.groups.insert(&group);
        let partition = Partition::new(PartitionParts {
            topic: key.0.clone(),
            index: key.1,
            group,
            sm,
            high_watermark,
            config,
            node_id: self.node_id(),
            budget_bytes: self.config.partition_inflight_bytes,
            cluster: Some(ClusterLink {
                metadata: self.metadata.clone(),
                leader_reports: self.leader_reports.clone(),
            }),
        });
        self.partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), Arc::new(partition));
        Ok(())
    }

    /// A partition group's voters with their raft addresses (this node's own address on a
    /// single node, whose groups of one never call out).
    pub(super) fn group_members(
        &self,
        replicas: &[NodeId],
    ) -> Result<BTreeMap<NodeId, String>, BrokerError> {
        if !self.in_cluster() {
            return Ok(replicas
                .iter()
                .map(|r| (*r, self.address.clone()))
                .collect());
        }
        let metadata = self.metadata();
        replicas
            .iter()
            .map(|r| match metadata.nodes.get(r) {
                Some(n) if !n.raft_address.is_empty() => Ok((*r, n.raft_address.clone())),
                _ => Err(BrokerError::Unavailable(format!(
                    "replica node {r} has not registered its address"
                ))),
            })
            .collect()
    }
}
