//! One consumer group on its coordinator: members, the target assignment, and what each
//! member may own now. Partitions move incrementally: the old owner is told to revoke a
//! partition, and only once it reports it released (after committing) does the new owner
//! get it, so no partition ever has two owners in the coordinator's view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::assignor::{self, Assignment, Subscriptions, TopicPartition};
use super::offset_record::OffsetValue;
use crate::error::BrokerError;

/// Member epoch of a join.
pub const JOIN_EPOCH: i32 = 0;
/// Member epoch of a leave.
pub const LEAVE_EPOCH: i32 = -1;
/// Member epoch of a static member leaving for a restart.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// Heartbeat interval while a member's assignment is settled.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// Heartbeat interval while it is still moving (partitions to take or to release).
pub const HEARTBEAT_INTERVAL_MOVING: Duration = Duration::from_millis(100);

/// What a member subscribes to.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    /// Topic names.
    pub topics: BTreeSet<String>,
    /// Or a pattern matched against whole topic names.
    pub pattern: Option<regex::Regex>,
}

impl Subscription {
    fn matches(&self, topic: &str) -> bool {
        if topic.starts_with("__") {
            return false;
        }
        self.topics.contains(topic) || self.pattern.as_ref().is_some_and(|p| p.is_match(topic))
    }
}

/// One member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Static instance id, if any.
    pub instance_id: Option<String>,
    /// Bumped whenever what it may own changes.
    pub epoch: i32,
    /// What it subscribes to.
    pub subscription: Subscription,
    /// Partitions it may own, with the member epoch that gave each.
    pub assigned: BTreeMap<TopicPartition, i32>,
    /// Partitions taken from it that it has not released yet.
    pub revoking: BTreeSet<TopicPartition>,
    /// When its revocations started (to expel a member that never releases).
    revoking_since: Option<Instant>,
    /// Expelled when silent for longer.
    pub session_timeout: Duration,
    last_seen: Instant,
}

impl Member {
    fn holds(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains_key(tp) || self.revoking.contains(tp)
    }
}

/// A heartbeat's content.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Empty when joining.
    pub member_id: String,
    /// See the `*_EPOCH` constants.
    pub member_epoch: i32,
    /// Static instance id.
    pub instance_id: Option<String>,
    /// Subscription.
    pub subscription: Subscription,
    /// Partitions the member still owns.
    pub owned: BTreeSet<TopicPartition>,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Whether partitions may be handed out now (not while a new coordinator waits for the
    /// previous one's members to notice it is gone).
    pub assign: bool,
}

/// The coordinator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The member's id.
    pub member_id: String,
    /// Its epoch now.
    pub member_epoch: i32,
    /// When to heartbeat next.
    pub interval: Duration,
    /// What it may own.
    pub assignment: Vec<TopicPartition>,
}

/// A committed offset with the log offset of its record (later records win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The commit.
    pub value: OffsetValue,
    /// Where its record is in `__consumer_offsets`.
    pub log_offset: u64,
}

/// A group's state on its coordinator.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// Bumped whenever the target assignment changes.
    pub epoch: i32,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Where the assignor wants each member to end up.
    pub target: Assignment,
    /// Committed offsets.
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// Target changes so far (rebalances), for metrics.
    pub rebalances: u64,
    /// Any change of members, target or holdings so far: parked heartbeats wake on it.
    pub changes: u64,
}

/// A fresh, unguessable member id (ids must not repeat across coordinators: a member the
/// previous coordinator knew must not pass for a new one).
fn new_member_id() -> String {
    let random = sluice_protocol::entropy::random_u64;
    format!("{:016x}{:016x}", random(), random())
}

impl Group {
    /// "empty", "reconciling" or "stable".
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            return "empty";
        }
        let settled = self.members.iter().all(|(id, m)| {
            m.revoking.is_empty()
                && m.assigned.keys().cloned().collect::<BTreeSet<_>>()
                    == self.target.get(id).cloned().unwrap_or_default()
        });
        if settled { "stable" } else { "reconciling" }
    }

    /// Whether the group holds nothing: no members, no offsets.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.offsets.is_empty()
    }

    /// The member holding `tp`, if any.
    pub fn owner_of(&self, tp: &TopicPartition) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, m)| m.holds(tp))
            .map(|(id, _)| id.as_str())
    }

    /// Handles one heartbeat at `now`, with the cluster's topics and partition counts.
    pub fn heartbeat(
        &mut self,
        group: &str,
        hb: Heartbeat,
        topics: &BTreeMap<String, u32>,
        now: Instant,
    ) -> Result<HeartbeatAnswer, BrokerError> {
        let unknown = || BrokerError::UnknownMember {
            group: group.to_string(),
            member: hb.member_id.clone(),
        };
        match hb.member_epoch {
            LEAVE_EPOCH => return Ok(self.leave(hb.member_id, topics)),
            STATIC_LEAVE_EPOCH => {
                let m = self.members.get_mut(&hb.member_id).ok_or_else(unknown)?;
                if m.instance_id.is_none() {
                    // Nobody could take its partitions over: a plain leave.
                    return Ok(self.leave(hb.member_id, topics));
                }
                // Keeps its partitions until the session timeout: a restart within it
                // (same instance id) takes them over without a rebalance.
                m.last_seen = now;
                return Ok(HeartbeatAnswer {
                    member_id: hb.member_id,
                    member_epoch: STATIC_LEAVE_EPOCH,
                    interval: HEARTBEAT_INTERVAL,
                    assignment: Vec::new(),
                });
            }
            JOIN_EPOCH => return self.join(hb, topics, now),
            epoch if epoch < 0 => {
                return Err(BrokerError::InvalidRequest(format!(
                    "member epoch {epoch}: 0 joins, -1 leaves, -2 leaves a static member"
                )));
            }
            epoch => {
                let m = self.members.get(&hb.member_id).ok_or_else(unknown)?;
                if epoch > m.epoch {
                    return Err(BrokerError::StaleMemberEpoch(format!(
                        "member epoch {epoch} is newer than the coordinator's {}",
                        m.epoch
                    )));
                }
            }
        }
        let id = hb.member_id.clone();
        self.update(&id, hb, topics, now, false)
    }

    /// Removes a member; its partitions go to others at once (it committed before leaving).
    fn leave(&mut self, member_id: String, topics: &BTreeMap<String, u32>) -> HeartbeatAnswer {
        if self.members.remove(&member_id).is_some() {
            self.changes += 1;
        }
        self.retarget(topics);
        HeartbeatAnswer {
            member_id,
            member_epoch: LEAVE_EPOCH,
            interval: HEARTBEAT_INTERVAL,
            assignment: Vec::new(),
        }
    }

    /// A join: a fresh member id, or a static member's predecessor taken over (the old
    /// incarnation is fenced: its id is gone).
    fn join(
        &mut self,
        hb: Heartbeat,
        topics: &BTreeMap<String, u32>,
        now: Instant,
    ) -> Result<HeartbeatAnswer, BrokerError> {
        // A member may name its own id (the SDK does: a join whose answer was lost and is
        // sent again then makes no second member). One the group knows (a retried join, or a
        // member rejoining after it was fenced) leaves first, freeing its partitions.
        let id = if hb.member_id.is_empty() {
            new_member_id()
        } else {
            self.members.remove(&hb.member_id);
            self.target.remove(&hb.member_id);
            hb.member_id.clone()
        };
        let predecessor = hb.instance_id.as_ref().and_then(|instance| {
            self.members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
                .map(|(id, _)| id.clone())
        });
        let taken_over = predecessor.and_then(|old| {
            if let Some(t) = self.target.remove(&old) {
                self.target.insert(id.clone(), t);
            }
            self.members.remove(&old)
        });
        let mut member = taken_over.unwrap_or_else(|| Member {
            instance_id: hb.instance_id.clone(),
            epoch: 0,
            subscription: Subscription::default(),
            assigned: BTreeMap::new(),
            revoking: BTreeSet::new(),
            revoking_since: None,
            session_timeout: hb.session_timeout,
            last_seen: now,
        });
        // Epoch 0 means "joining": a member's first answer is always past it.
        member.epoch = member.epoch.max(self.epoch).max(1);
        self.members.insert(id.clone(), member);
        self.update(&id, hb, topics, now, true)
    }

    fn update(
        &mut self,
        id: &str,
        hb: Heartbeat,
        topics: &BTreeMap<String, u32>,
        now: Instant,
        joined: bool,
    ) -> Result<HeartbeatAnswer, BrokerError> {
        let Some(m) = self.members.get_mut(id) else {
            return Err(BrokerError::Internal(format!("member {id} vanished")));
        };
        m.last_seen = now;
        m.session_timeout = hb.session_timeout;
        m.subscription = hb.subscription;
        // Released: revoked partitions it no longer reports. A member that just joined
        // (or took over a static predecessor) reports nothing it has not been given.
        let revoking = m.revoking.len();
        if !joined {
            m.revoking.retain(|tp| hb.owned.contains(tp));
        }
        let released = m.revoking.len() != revoking;
        if m.revoking.is_empty() {
            m.revoking_since = None;
        }
        if released || joined {
            self.changes += 1;
        }
        // Also when its subscription is the same: topics and partitions may have been
        // created since.
        self.retarget(topics);
        self.reconcile(id, now, hb.assign);
        let Some(m) = self.members.get(id) else {
            return Err(BrokerError::Internal(format!("member {id} vanished")));
        };
        let target = self.target.get(id).cloned().unwrap_or_default();
        let moving =
            !m.revoking.is_empty() || m.assigned.keys().cloned().collect::<BTreeSet<_>>() != target;
        Ok(HeartbeatAnswer {
            member_id: id.to_string(),
            member_epoch: m.epoch,
            interval: if moving {
                HEARTBEAT_INTERVAL_MOVING
            } else {
                HEARTBEAT_INTERVAL
            },
            assignment: m.assigned.keys().cloned().collect(),
        })
    }

    /// Recomputes the target assignment; a change bumps the group epoch.
    fn retarget(&mut self, topics: &BTreeMap<String, u32>) {
        let subscriptions: Subscriptions = self
            .members
            .iter()
            .map(|(id, m)| {
                let names = topics
                    .keys()
                    .filter(|t| m.subscription.matches(t))
                    .cloned()
                    .collect();
                (id.clone(), names)
            })
            .collect();
        let target = assignor::assign(&subscriptions, topics, &self.target);
        if target != self.target {
            self.target = target;
            self.epoch += 1;
            self.changes += 1;
            self.rebalances += 1;
        }
    }

    /// Moves member `id` towards its target: revokes what it should not own, and gives it
    /// what it should own once no other member holds it.
    fn reconcile(&mut self, id: &str, now: Instant, assign: bool) {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .members
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .flat_map(|(_, m)| m.assigned.keys().chain(m.revoking.iter()).cloned())
            .collect();
        let group_epoch = self.epoch;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        let mut changed = false;
        let revoke: Vec<TopicPartition> = m
            .assigned
            .keys()
            .filter(|tp| !target.contains(*tp))
            .cloned()
            .collect();
        for tp in revoke {
            m.assigned.remove(&tp);
            m.revoking.insert(tp);
            m.revoking_since.get_or_insert(now);
            changed = true;
        }
        let new_epoch = (m.epoch + 1).max(group_epoch);
        for tp in target.into_iter().filter(|_| assign) {
            if !m.holds(&tp) && !held_elsewhere.contains(&tp) {
                m.assigned.insert(tp, new_epoch);
                changed = true;
            }
        }
        if changed {
            m.epoch = new_epoch;
            self.changes += 1;
        }
    }

    /// Expels members silent past their session timeout, or holding revoked partitions
    /// that long; true if any was.
    pub fn expire(&mut self, topics: &BTreeMap<String, u32>, now: Instant) -> bool {
        let before = self.members.len();
        self.members.retain(|_, m| {
            let silent = now.duration_since(m.last_seen) > m.session_timeout;
            let stuck = m
                .revoking_since
                .is_some_and(|since| now.duration_since(since) > m.session_timeout);
            !(silent || stuck)
        });
        let expired = self.members.len() != before;
        if expired {
            self.changes += 1;
            self.retarget(topics);
        }
        expired
    }

    /// Refuses a commit unless `member_id` owns every partition in `tps` at an epoch it
    /// knows; a group without members takes commits with an empty member id.
    pub fn check_commit<'a>(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        mut tps: impl Iterator<Item = &'a TopicPartition>,
    ) -> Result<(), BrokerError> {
        if member_id.is_empty() {
            if self.members.is_empty() {
                return Ok(());
            }
            return Err(BrokerError::GroupNotEmpty(group.to_string()));
        }
        let m = self
            .members
            .get(member_id)
            .ok_or_else(|| BrokerError::UnknownMember {
                group: group.to_string(),
                member: member_id.to_string(),
            })?;
        if member_epoch > m.epoch {
            return Err(BrokerError::StaleMemberEpoch(format!(
                "member epoch {member_epoch} is newer than the coordinator's {}",
                m.epoch
            )));
        }
        let stale = tps.find(|tp| match m.assigned.get(*tp) {
            Some(given) => member_epoch < *given,
            None => !m.revoking.contains(*tp),
        });
        match stale {
            Some((topic, partition)) => Err(BrokerError::StaleMemberEpoch(format!(
                "member {member_id} at epoch {member_epoch} does not own {topic}/{partition}"
            ))),
            None => Ok(()),
        }
    }

    /// Records a commit written at `log_offset` (an older record never replaces a newer).
    pub fn apply_commit(
        &mut self,
        tp: TopicPartition,
        committed: Option<Committed>,
        log_offset: u64,
    ) {
        match committed {
            Some(c) => {
                let newer = self
                    .offsets
                    .get(&tp)
                    .is_none_or(|old| old.log_offset < c.log_offset);
                if newer {
                    self.offsets.insert(tp, c);
                }
            }
            None => {
                if self
                    .offsets
                    .get(&tp)
                    .is_some_and(|old| old.log_offset < log_offset)
                {
                    self.offsets.remove(&tp);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(n: u32) -> BTreeMap<String, u32> {
        BTreeMap::from([("t".to_string(), n)])
    }

    fn hb(id: &str, epoch: i32, owned: &[u32]) -> Heartbeat {
        Heartbeat {
            member_id: id.to_string(),
            member_epoch: epoch,
            instance_id: None,
            subscription: Subscription {
                topics: BTreeSet::from(["t".to_string()]),
                pattern: None,
            },
            owned: owned.iter().map(|p| ("t".to_string(), *p)).collect(),
            session_timeout: Duration::from_secs(10),
            assign: true,
        }
    }

    fn parts(a: &HeartbeatAnswer) -> Vec<u32> {
        a.assignment.iter().map(|(_, p)| *p).collect()
    }

    #[test]
    fn a_partition_moves_only_after_its_old_owner_releases_it() {
        let now = Instant::now();
        let mut g = Group::default();
        let a = g
            .heartbeat("g", hb("", 0, &[]), &topics(4), now)
            .expect("join");
        assert_eq!(parts(&a), vec![0, 1, 2, 3]);
        let b = g
            .heartbeat("g", hb("", 0, &[]), &topics(4), now)
            .expect("join");
        assert!(parts(&b).is_empty(), "nothing is free yet: {b:?}");
        assert_eq!(g.state(), "reconciling");
        // a learns of the revocation, still owns everything it was told to give up.
        let a2 = g
            .heartbeat(
                "g",
                hb(&a.member_id, a.member_epoch, &[0, 1, 2, 3]),
                &topics(4),
                now,
            )
            .expect("heartbeat");
        assert_eq!(parts(&a2).len(), 2);
        let b2 = g
            .heartbeat("g", hb(&b.member_id, b.member_epoch, &[]), &topics(4), now)
            .expect("heartbeat");
        assert!(parts(&b2).is_empty(), "a has not released: {b2:?}");
        // A commit by a for a revoked partition it still holds is taken.
        let revoked: Vec<TopicPartition> =
            g.members[&a.member_id].revoking.iter().cloned().collect();
        g.check_commit("g", &a.member_id, a2.member_epoch, revoked.iter())
            .expect("a revoking member commits what it gives up");
        // a releases; then b gets them.
        let a3 = g
            .heartbeat(
                "g",
                hb(&a.member_id, a2.member_epoch, &parts(&a2)),
                &topics(4),
                now,
            )
            .expect("heartbeat");
        assert_eq!(parts(&a3), parts(&a2));
        let b3 = g
            .heartbeat("g", hb(&b.member_id, b2.member_epoch, &[]), &topics(4), now)
            .expect("heartbeat");
        assert_eq!(parts(&b3).len(), 2);
        assert_eq!(g.state(), "stable");
        // Now a's commit for a partition it gave away is stale.
        let err = g
            .check_commit("g", &a.member_id, a3.member_epoch, revoked.iter())
            .expect_err("fenced");
        assert!(matches!(err, BrokerError::StaleMemberEpoch(_)), "{err}");
    }

    #[test]
    fn a_silent_member_is_expelled_and_its_partitions_move() {
        let now = Instant::now();
        let mut g = Group::default();
        let a = g
            .heartbeat("g", hb("", 0, &[]), &topics(2), now)
            .expect("join");
        let b = g
            .heartbeat("g", hb("", 0, &[]), &topics(2), now)
            .expect("join");
        let a = g
            .heartbeat(
                "g",
                hb(&a.member_id, a.member_epoch, &[0, 1]),
                &topics(2),
                now,
            )
            .expect("hb");
        let a = g
            .heartbeat(
                "g",
                hb(&a.member_id, a.member_epoch, &parts(&a)),
                &topics(2),
                now,
            )
            .expect("hb");
        assert_eq!(parts(&a).len(), 1);
        let later = now + Duration::from_secs(11);
        g.heartbeat(
            "g",
            hb(&b.member_id, b.member_epoch, &[]),
            &topics(2),
            now + Duration::from_secs(10),
        )
        .expect("b stays");
        assert!(g.expire(&topics(2), later), "a expired");
        let b2 = g
            .heartbeat(
                "g",
                hb(&b.member_id, b.member_epoch, &[]),
                &topics(2),
                later,
            )
            .expect("hb");
        assert_eq!(parts(&b2), vec![0, 1]);
        let err = g
            .check_commit(
                "g",
                &a.member_id,
                a.member_epoch,
                [("t".to_string(), 0)].iter(),
            )
            .expect_err("an expelled member is unknown");
        assert!(matches!(err, BrokerError::UnknownMember { .. }));
    }

    #[test]
    fn a_static_member_restarting_takes_over_its_partitions() {
        let now = Instant::now();
        let mut g = Group::default();
        let join = |g: &mut Group, instance: &str| {
            let mut h = hb("", 0, &[]);
            h.instance_id = Some(instance.to_string());
            g.heartbeat("g", h, &topics(4), now).expect("join")
        };
        let a = join(&mut g, "ia");
        let b = join(&mut g, "ib");
        let a = g
            .heartbeat(
                "g",
                hb(&a.member_id, a.member_epoch, &[0, 1, 2, 3]),
                &topics(4),
                now,
            )
            .expect("hb");
        let _a = g
            .heartbeat(
                "g",
                hb(&a.member_id, a.member_epoch, &parts(&a)),
                &topics(4),
                now,
            )
            .expect("hb");
        let b = g
            .heartbeat("g", hb(&b.member_id, b.member_epoch, &[]), &topics(4), now)
            .expect("hb");
        let before = parts(&b);
        assert_eq!(before.len(), 2);
        let epoch = g.epoch;
        g.heartbeat(
            "g",
            hb(&b.member_id, STATIC_LEAVE_EPOCH, &[]),
            &topics(4),
            now,
        )
        .expect("static leave");
        let b2 = join(&mut g, "ib");
        assert_ne!(b2.member_id, b.member_id);
        assert_eq!(parts(&b2), before, "same partitions, no rebalance");
        assert_eq!(g.epoch, epoch);
        assert!(
            g.check_commit("g", &b.member_id, b.member_epoch, [].iter())
                .is_err(),
            "old id fenced"
        );
    }

    #[test]
    fn commits_from_unknown_future_or_non_owning_members_are_refused() {
        let now = Instant::now();
        let mut g = Group::default();
        let a = g
            .heartbeat("g", hb("", 0, &[]), &topics(1), now)
            .expect("join");
        let tp = [("t".to_string(), 0)];
        g.check_commit("g", &a.member_id, a.member_epoch, tp.iter())
            .expect("owner");
        assert!(
            g.check_commit("g", &a.member_id, a.member_epoch + 1, tp.iter())
                .is_err()
        );
        assert!(
            g.check_commit("g", &a.member_id, a.member_epoch - 1, tp.iter())
                .is_err()
        );
        assert!(
            g.check_commit("g", "", 0, tp.iter()).is_err(),
            "members present"
        );
        g.heartbeat("g", hb(&a.member_id, LEAVE_EPOCH, &[]), &topics(1), now)
            .expect("leave");
        g.check_commit("g", "", 0, tp.iter())
            .expect("an empty group takes plain commits");
    }

    #[test]
    fn newer_commit_records_win_whatever_order_they_are_applied_in() {
        let mut g = Group::default();
        let tp = ("t".to_string(), 0);
        let c = |offset, log_offset| Committed {
            value: OffsetValue {
                offset,
                leader_epoch: 0,
                commit_time_ms: 0,
                metadata: String::new(),
            },
            log_offset,
        };
        g.apply_commit(tp.clone(), Some(c(20, 5)), 5);
        g.apply_commit(tp.clone(), Some(c(10, 4)), 4);
        assert_eq!(g.offsets[&tp].value.offset, 20);
        g.apply_commit(tp.clone(), None, 3);
        assert!(
            g.offsets.contains_key(&tp),
            "an older tombstone changes nothing"
        );
        g.apply_commit(tp.clone(), None, 6);
        assert!(g.is_empty());
    }

    #[test]
    fn a_join_sent_again_under_the_members_own_id_makes_no_second_member() {
        let now = Instant::now();
        let mut g = Group::default();
        let first = g
            .heartbeat("g", hb("own-1", 0, &[]), &topics(2), now)
            .expect("join");
        assert_eq!(first.member_id, "own-1");
        // The answer was lost; the same join again.
        let again = g
            .heartbeat("g", hb("own-1", 0, &[]), &topics(2), now)
            .expect("join");
        assert_eq!(again.member_id, "own-1");
        assert_eq!(g.members.len(), 1);
        assert_eq!(again.assignment.len(), 2, "its partitions, not a ghost's");
    }
}
