//! The coordinator's assignor: balanced (every member of a homogeneous group gets ⌊P/M⌋ or
//! ⌈P/M⌉ partitions) and sticky (a partition stays with its member unless balance needs
//! it elsewhere), so a rebalance moves as few partitions as it can.

use std::collections::{BTreeMap, BTreeSet};

/// A topic and partition.
pub type TopicPartition = (String, u32);

/// Members' subscribed topics (resolved to names), by member id.
pub type Subscriptions = BTreeMap<String, BTreeSet<String>>;

/// Partitions per member.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// The target assignment for `members`, given each topic's partition count and the
/// previous target. Every partition of a subscribed topic goes to exactly one member
/// subscribed to its topic.
pub fn assign(
    members: &Subscriptions,
    partition_counts: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let wanted: BTreeSet<TopicPartition> = members
        .values()
        .flatten()
        .filter_map(|t| partition_counts.get(t).map(|n| (t, *n)))
        .flat_map(|(t, n)| (0..n).map(move |p| (t.clone(), p)))
        .collect();
    let mut result = keep_sticky(members, &wanted, previous);
    place_unowned(members, &wanted, &mut result);
    balance(members, wanted.len(), &mut result);
    result
}

/// The members subscribed to `tp`'s topic.
fn eligible<'m>(members: &'m Subscriptions, tp: &TopicPartition) -> Vec<&'m String> {
    members
        .iter()
        .filter(|(_, topics)| topics.contains(&tp.0))
        .map(|(m, _)| m)
        .collect()
}

/// The eligible member (other than `except`) with the fewest partitions, ties by id.
fn least_loaded<'m>(
    members: &'m Subscriptions,
    result: &Assignment,
    tp: &TopicPartition,
    except: Option<&String>,
) -> Option<&'m String> {
    eligible(members, tp)
        .into_iter()
        .filter(|m| Some(*m) != except)
        .min_by_key(|m| (result.get(*m).map_or(0, BTreeSet::len), (*m).clone()))
}

/// What `previous` gave each member that is still wanted and still subscribed.
fn keep_sticky(
    members: &Subscriptions,
    wanted: &BTreeSet<TopicPartition>,
    previous: &Assignment,
) -> Assignment {
    let mut result: Assignment = members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let mut owned: BTreeSet<&TopicPartition> = BTreeSet::new();
    for (member, tps) in previous {
        let Some(topics) = members.get(member) else {
            continue;
        };
        for tp in tps {
            if wanted.contains(tp)
                && topics.contains(&tp.0)
                && owned.insert(tp)
                && let Some(set) = result.get_mut(member)
            {
                set.insert(tp.clone());
            }
        }
    }
    result
}

/// New or orphaned partitions go to the least loaded eligible member.
fn place_unowned(
    members: &Subscriptions,
    wanted: &BTreeSet<TopicPartition>,
    result: &mut Assignment,
) {
    let owned: BTreeSet<TopicPartition> = result.values().flatten().cloned().collect();
    for tp in wanted.difference(&owned) {
        if let Some(m) = least_loaded(members, result, tp, None)
            && let Some(set) = result.get_mut(m)
        {
            set.insert(tp.clone());
        }
    }
}

/// Moves partitions from the most to the least loaded eligible member while that narrows
/// the gap. Every move lowers the sum of squared loads, so this ends; the bound is a belt on
/// top.
fn balance(members: &Subscriptions, partitions: usize, result: &mut Assignment) {
    let bound = partitions * members.len().max(1) + 1;
    for _ in 0..bound {
        let Some((from, to, tp)) = one_move(members, result) else {
            break;
        };
        if let Some(set) = result.get_mut(&from) {
            set.remove(&tp);
        }
        if let Some(set) = result.get_mut(&to) {
            set.insert(tp);
        }
    }
}

/// A move (from, to, partition) that narrows the load gap, from the most loaded member.
fn one_move(
    members: &Subscriptions,
    result: &Assignment,
) -> Option<(String, String, TopicPartition)> {
    let mut by_load: Vec<(&String, usize)> = result.iter().map(|(m, set)| (m, set.len())).collect();
    by_load.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    for (from, load) in by_load {
        let Some(set) = result.get(from) else {
            continue;
        };
        for tp in set.iter().rev() {
            if let Some(to) = least_loaded(members, result, tp, Some(from))
                && result.get(to).map_or(0, BTreeSet::len) + 1 < load
            {
                return Some((from.clone(), to.clone(), tp.clone()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(members: &[&str], topics: &[&str]) -> Subscriptions {
        members
            .iter()
            .map(|m| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn loads(a: &Assignment) -> Vec<usize> {
        a.values().map(BTreeSet::len).collect()
    }

    fn check_complete(a: &Assignment, total: usize) {
        let all: Vec<&TopicPartition> = a.values().flatten().collect();
        let distinct: BTreeSet<&TopicPartition> = all.iter().copied().collect();
        assert_eq!(
            all.len(),
            distinct.len(),
            "a partition has two owners: {a:?}"
        );
        assert_eq!(distinct.len(), total, "not every partition is owned: {a:?}");
    }

    #[test]
    fn a_homogeneous_group_is_balanced_within_one() {
        for members in 1..8 {
            for partitions in 0..20u32 {
                let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let a = assign(
                    &subs(&refs, &["t"]),
                    &counts(&[("t", partitions)]),
                    &Assignment::new(),
                );
                check_complete(&a, partitions as usize);
                let l = loads(&a);
                let (min, max) = (l.iter().min(), l.iter().max());
                assert!(max.unwrap_or(&0) - min.unwrap_or(&0) <= 1, "{l:?}");
            }
        }
    }

    #[test]
    fn a_joining_member_takes_partitions_only_from_others_and_no_more_than_needed() {
        let before = assign(
            &subs(&["a", "b"], &["t"]),
            &counts(&[("t", 6)]),
            &Assignment::new(),
        );
        let after = assign(
            &subs(&["a", "b", "c"], &["t"]),
            &counts(&[("t", 6)]),
            &before,
        );
        check_complete(&after, 6);
        assert_eq!(loads(&after), vec![2, 2, 2]);
        for m in ["a", "b"] {
            assert!(after[m].is_subset(&before[m]), "{m} kept only its own");
        }
    }

    #[test]
    fn a_leaving_members_partitions_are_spread_and_the_rest_stay() {
        let before = assign(
            &subs(&["a", "b", "c"], &["t"]),
            &counts(&[("t", 7)]),
            &Assignment::new(),
        );
        let after = assign(&subs(&["a", "c"], &["t"]), &counts(&[("t", 7)]), &before);
        check_complete(&after, 7);
        for m in ["a", "c"] {
            assert!(before[m].is_subset(&after[m]), "{m} kept everything");
        }
        let l = loads(&after);
        assert!(l.iter().max().unwrap_or(&0) - l.iter().min().unwrap_or(&0) <= 1);
    }

    #[test]
    fn partitions_go_only_to_members_subscribed_to_their_topic() {
        let mut s = subs(&["a"], &["x"]);
        s.extend(subs(&["b"], &["x", "y"]));
        let a = assign(
            &s,
            &counts(&[("x", 4), ("y", 4), ("z", 3)]),
            &Assignment::new(),
        );
        check_complete(&a, 8);
        assert!(a["a"].iter().all(|(t, _)| t == "x"));
        assert!(a.values().flatten().all(|(t, _)| t != "z"));
    }

    #[test]
    fn the_same_input_gives_the_same_target() {
        let s = subs(&["a", "b", "c"], &["t", "u"]);
        let c = counts(&[("t", 5), ("u", 3)]);
        let first = assign(&s, &c, &Assignment::new());
        assert_eq!(assign(&s, &c, &first), first, "stable under recomputation");
    }
}
