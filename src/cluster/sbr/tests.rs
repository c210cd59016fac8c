//! The resolver's decisions for both (or all) sides of a partition: `shared/spec/reliability.md` §4.2's matrix
//! (from Akka's `SplitBrainResolverIntegrationSpec`) and cases of Akka's `SplitBrainResolverSpec`.

use super::*;
use crate::cluster::membership::{Member, Observation};
use std::time::SystemTime;

/// Member `i`: address `a<i>` (so member 0 has the lowest address), up number `i + 1` (member 0 is the oldest).
fn member(i: usize, status: MemberStatus) -> SbrMember {
    SbrMember {
        id: id(i),
        address: format!("a{i:03}"),
        status,
        up_number: (status != MemberStatus::Joining).then_some(i as i64 + 1),
        reachable: true,
    }
}

fn id(i: usize) -> MemberId {
    MemberId::new(format!("n{i}"), "1")
}

fn up(n: usize) -> Vec<SbrMember> {
    (0..n).map(|i| member(i, MemberStatus::Up)).collect()
}

/// The view of the side holding `side`'s members.
fn view_of(members: &[SbrMember], side: &[usize]) -> View {
    let members =
        members.iter().map(|m| SbrMember { reachable: side.iter().any(|&i| id(i) == m.id), ..m.clone() }).collect();
    View { members, observations: Vec::new() }
}

/// Every side decides on its own view; a member survives if no side downs it.
fn survivors(strategy: Strategy, members: &[SbrMember], sides: &[&[usize]]) -> BTreeSet<usize> {
    let mut downed = BTreeSet::new();
    for side in sides {
        let view = view_of(members, side);
        downed.extend(nodes_to_down(strategy, &view, decide(strategy, &view)));
    }
    (0..members.len()).filter(|&i| !downed.contains(&id(i))).collect()
}

fn set(members: &[usize]) -> BTreeSet<usize> {
    members.iter().copied().collect()
}

#[test]
fn static_quorum_1_2_downs_both_sides() {
    let strategy = Strategy::StaticQuorum { quorum_size: 3 };
    assert_eq!(survivors(strategy, &up(3), &[&[0], &[1, 2]]), set(&[]));
}

#[test]
fn static_quorum_4_4_downs_both_sides() {
    // Eight members are too many for a quorum of 4 (more than 2 × 4 − 1): every side downs all.
    let strategy = Strategy::StaticQuorum { quorum_size: 4 };
    assert_eq!(decide(strategy, &view_of(&up(8), &[0, 1, 2, 3])), Decision::DownAll);
    assert_eq!(survivors(strategy, &up(8), &[&[0, 1, 2, 3], &[4, 5, 6, 7]]), set(&[]));
    // With a quorum of 5 neither side has it.
    let strategy = Strategy::StaticQuorum { quorum_size: 5 };
    assert_eq!(survivors(strategy, &up(8), &[&[0, 1, 2, 3], &[4, 5, 6, 7]]), set(&[]));
}

#[test]
fn static_quorum_5_4_keeps_the_5() {
    let strategy = Strategy::StaticQuorum { quorum_size: 5 };
    assert_eq!(survivors(strategy, &up(9), &[&[0, 1, 2, 3], &[4, 5, 6, 7, 8]]), set(&[4, 5, 6, 7, 8]));
}

#[test]
fn keep_majority_2_1_keeps_the_2() {
    assert_eq!(survivors(Strategy::KeepMajority, &up(3), &[&[0], &[1, 2]]), set(&[1, 2]));
}

#[test]
fn keep_majority_4_5_keeps_the_5() {
    assert_eq!(survivors(Strategy::KeepMajority, &up(9), &[&[0, 1, 2, 3], &[4, 5, 6, 7, 8]]), set(&[4, 5, 6, 7, 8]));
}

#[test]
fn keep_majority_4_4_keeps_the_side_with_the_lowest_address() {
    let members = up(8);
    assert_eq!(survivors(Strategy::KeepMajority, &members, &[&[0, 2, 4, 6], &[1, 3, 5, 7]]), set(&[0, 2, 4, 6]));
    // The address decides, not the age: give member 5 the lowest address.
    let mut members = up(8);
    members[5].address = "a".into();
    assert_eq!(survivors(Strategy::KeepMajority, &members, &[&[0, 2, 4, 6], &[1, 3, 5, 7]]), set(&[1, 3, 5, 7]));
}

#[test]
fn keep_majority_without_majority_among_three_sides_downs_everyone() {
    assert_eq!(survivors(Strategy::KeepMajority, &up(5), &[&[0, 1], &[2, 3], &[4]]), set(&[]));
}

#[test]
fn keep_majority_downs_all_when_a_membership_change_could_flip_the_majority() {
    // This side: 0 up, 1 leaving (maybe exiting over there). Other side: 2 up, 3 joining (maybe up over there).
    let members = vec![
        member(0, MemberStatus::Up),
        member(1, MemberStatus::Leaving),
        member(2, MemberStatus::Up),
        member(3, MemberStatus::Joining),
    ];
    assert_eq!(decide(Strategy::KeepMajority, &view_of(&members, &[0, 1])), Decision::DownAll);
    // Without the joining member the recheck agrees.
    assert_eq!(decide(Strategy::KeepMajority, &view_of(&members[..3], &[0, 1])), Decision::DownUnreachable);
}

#[test]
fn keep_majority_does_not_count_joining_members_but_downs_them() {
    // 2 up here, 1 up + 1 joining over there: 2 > 1, and the recheck's 2 vs 2 tie goes to the lowest address.
    let members = vec![
        member(0, MemberStatus::Up),
        member(1, MemberStatus::Up),
        member(2, MemberStatus::Up),
        member(3, MemberStatus::Joining),
    ];
    let view = view_of(&members, &[0, 1]);
    assert_eq!(decide(Strategy::KeepMajority, &view), Decision::DownUnreachable);
    assert_eq!(nodes_to_down(Strategy::KeepMajority, &view, Decision::DownUnreachable), vec![id(2), id(3)]);
}

#[test]
fn keep_oldest_3_3_keeps_the_side_of_the_oldest() {
    let strategy = Strategy::KeepOldest { down_if_alone: true };
    assert_eq!(survivors(strategy, &up(6), &[&[0, 1, 2], &[3, 4, 5]]), set(&[0, 1, 2]));
    // Age decides, not the address: make member 4 the oldest.
    let mut members = up(6);
    members[4].up_number = Some(0);
    assert_eq!(survivors(strategy, &members, &[&[0, 1, 2], &[3, 4, 5]]), set(&[3, 4, 5]));
}

#[test]
fn keep_oldest_1_2_keeps_the_2_when_the_oldest_is_alone() {
    let strategy = Strategy::KeepOldest { down_if_alone: true };
    assert_eq!(survivors(strategy, &up(3), &[&[0], &[1, 2]]), set(&[1, 2]));
    // Without down-if-alone the oldest stays, alone.
    let strategy = Strategy::KeepOldest { down_if_alone: false };
    assert_eq!(survivors(strategy, &up(3), &[&[0], &[1, 2]]), set(&[0]));
}

#[test]
fn keep_oldest_in_a_two_member_cluster_keeps_the_oldest_even_alone() {
    let strategy = Strategy::KeepOldest { down_if_alone: true };
    assert_eq!(survivors(strategy, &up(2), &[&[0], &[1]]), set(&[0]));
}

#[test]
fn keep_oldest_downs_all_when_leaving_oldest_could_be_exiting() {
    // The oldest (0) is here but leaving: over there it may already be exiting, and then the oldest is member 1,
    // over there too.
    let mut members = up(4);
    members[0].status = MemberStatus::Leaving;
    let strategy = Strategy::KeepOldest { down_if_alone: false };
    assert_eq!(decide(strategy, &view_of(&members, &[0, 2])), Decision::DownAll);
    // When the next oldest is here too, both counts agree.
    assert_eq!(decide(strategy, &view_of(&members, &[0, 1])), Decision::DownUnreachable);
}

#[test]
fn down_all_downs_everyone_even_joining_members() {
    let mut members = up(3);
    members.push(member(3, MemberStatus::Joining));
    members.push(member(4, MemberStatus::Exiting));
    let view = view_of(&members, &[0, 1]);
    assert_eq!(decide(Strategy::DownAll, &view), Decision::DownAll);
    // Exiting members are already on their way out; they are not downed.
    assert_eq!(nodes_to_down(Strategy::DownAll, &view, Decision::DownAll), vec![id(0), id(1), id(2), id(3)]);
}

#[test]
fn lease_majority_delays_the_minority_and_reverses_without_the_lease() {
    let delay = Duration::from_secs(2);
    let strategy = Strategy::LeaseMajority { acquire_delay_for_minority: delay };
    let members = up(5);
    assert_eq!(
        decide(strategy, &view_of(&members, &[0, 1, 2])),
        Decision::AcquireLeaseAndDownUnreachable { delay: Duration::ZERO }
    );
    let minority = decide(strategy, &view_of(&members, &[3, 4]));
    assert_eq!(minority, Decision::AcquireLeaseAndDownUnreachable { delay });
    assert_eq!(reverse(minority), Decision::DownReachable);
    // On a tie the side without the lowest address is the minority.
    let members = up(4);
    assert_eq!(
        decide(strategy, &view_of(&members, &[0, 1])),
        Decision::AcquireLeaseAndDownUnreachable { delay: Duration::ZERO }
    );
    assert_eq!(decide(strategy, &view_of(&members, &[2, 3])), Decision::AcquireLeaseAndDownUnreachable { delay });
}

fn snapshot(n: usize, unreachable: &[(usize, usize)]) -> ClusterSnapshot {
    let members = (0..n)
        .map(|i| Member {
            id: id(i),
            address: format!("a{i:03}"),
            status: MemberStatus::Up,
            up_number: Some(i as i64 + 1),
            joined_at: SystemTime::UNIX_EPOCH,
            lease_expires_at: SystemTime::UNIX_EPOCH,
            lease_valid: true,
        })
        .collect();
    let observations = unreachable
        .iter()
        .map(|&(observer, subject)| Observation { observer: id(observer), subject: id(subject), reachable: false })
        .collect();
    ClusterSnapshot { version: 7, members, observations }
}

#[test]
fn a_clean_split_seen_through_the_database_is_not_an_indirect_connection() {
    // 0 | 1 2: everyone reports the other side, and every node reads every report.
    let snapshot = snapshot(3, &[(0, 1), (0, 2), (1, 0), (2, 0)]);
    for (me, expected) in [(0, Decision::DownReachable), (1, Decision::DownUnreachable), (2, Decision::DownUnreachable)]
    {
        let view = View::from_snapshot(&snapshot, &id(me));
        assert!(view.indirectly_connected().is_empty(), "{me}");
        assert_eq!(decide(Strategy::KeepMajority, &view), expected, "{me}");
        assert_eq!(nodes_to_down(Strategy::KeepMajority, &view, expected), vec![id(0)], "{me}");
    }
}

#[test]
fn indirectly_connected_members_are_downed() {
    // 0 and 1 cannot reach each other; 2 reaches both (reliability.md §4.5 scenario 6).
    let snapshot = snapshot(3, &[(0, 1), (1, 0)]);
    let view = View::from_snapshot(&snapshot, &id(2));
    assert_eq!(view.indirectly_connected(), [id(0), id(1)].into_iter().collect());
    let decision = decide(Strategy::KeepMajority, &view);
    assert_eq!(decision, Decision::DownIndirectlyConnected);
    assert_eq!(nodes_to_down(Strategy::KeepMajority, &view, decision), vec![id(0), id(1)]);
    // Seen from 0, 1 is simply unreachable, and 0's side (0, 2) is the majority.
    let view = View::from_snapshot(&snapshot, &id(0));
    assert_eq!(decide(Strategy::KeepMajority, &view), Decision::DownUnreachable);
    assert_eq!(nodes_to_down(Strategy::KeepMajority, &view, Decision::DownUnreachable), vec![id(1)]);
}

#[test]
fn indirectly_connected_plus_a_clean_partition_downs_both_groups() {
    // 0 ✕ 1 indirectly connected; 4 crashed: everyone reports it. Seen from 2.
    let snapshot = snapshot(5, &[(0, 1), (1, 0), (0, 4), (1, 4), (2, 4), (3, 4)]);
    let view = View::from_snapshot(&snapshot, &id(2));
    let decision = decide(Strategy::KeepMajority, &view);
    assert_eq!(decision, Decision::DownIndirectlyConnected);
    assert_eq!(nodes_to_down(Strategy::KeepMajority, &view, decision), vec![id(0), id(1), id(4)]);
}

#[test]
fn down_and_removed_members_are_left_out_of_the_view() {
    let mut snapshot = snapshot(3, &[(0, 2), (1, 2)]);
    snapshot.members[2].status = MemberStatus::Down;
    let view = View::from_snapshot(&snapshot, &id(0));
    assert_eq!(view.members.len(), 2);
    assert!(!view.has_unreachable());
}

#[test]
fn stability_waits_for_stable_after_then_decides() {
    let start = Instant::now();
    let secs = |s: u64| start + Duration::from_secs(s);
    let mut stability = Stability::new(Duration::from_secs(20), true);
    assert_eq!(stability.tick(secs(0), false), Tick::Wait);
    stability.changed(secs(1));
    assert_eq!(stability.tick(secs(20), true), Tick::Wait);
    assert_eq!(stability.tick(secs(21), true), Tick::Decide);
    // A new change restarts the stable period.
    stability.changed(secs(22));
    assert_eq!(stability.tick(secs(30), true), Tick::Wait);
}

#[test]
fn down_all_when_unstable_fires_after_stable_after_plus_three_quarters() {
    let start = Instant::now();
    let secs = |s: u64| start + Duration::from_secs(s);
    let mut stability = Stability::new(Duration::from_secs(20), true);
    // A change every 5 s never lets the view become stable; 20 + 15 s after the first change, down all.
    for t in (0..35).step_by(5) {
        stability.changed(secs(t));
        assert_eq!(stability.tick(secs(t), true), Tick::Wait, "{t}");
    }
    assert_eq!(stability.tick(secs(35), true), Tick::DownAllUnstable);
    // Healing resets the counter.
    assert_eq!(stability.tick(secs(36), false), Tick::Wait);
    stability.changed(secs(37));
    assert_eq!(stability.tick(secs(40), true), Tick::Wait);
}

#[test]
fn the_unstable_margin_is_at_least_four_seconds_and_can_be_off() {
    let start = Instant::now();
    let mut stability = Stability::new(Duration::from_secs(2), true);
    stability.changed(start);
    for ms in (0..6000).step_by(1000) {
        stability.changed(start + Duration::from_millis(ms));
    }
    assert_eq!(stability.tick(start + Duration::from_millis(5999), true), Tick::Wait);
    assert_eq!(stability.tick(start + Duration::from_secs(6), true), Tick::DownAllUnstable);
    let mut off = Stability::new(Duration::from_secs(2), false);
    for s in 0..100 {
        off.changed(start + Duration::from_secs(s));
        assert_eq!(off.tick(start + Duration::from_secs(s), true), Tick::Wait);
    }
}

#[test]
fn a_member_that_becomes_leader_does_not_inherit_an_old_instability_period() {
    let start = Instant::now();
    let secs = |s: u64| start + Duration::from_secs(s);
    let mut stability = Stability::new(Duration::from_secs(2), true);
    // Not the leader: a member joined at 0 s, and everything stayed reachable (observed, never ticked).
    stability.changed(secs(0));
    for _ in 0..60 {
        stability.observe(false);
    }
    // At 60 s the leader crashes: its peers see it unreachable (a version change), this member takes over.
    stability.changed(secs(60));
    stability.observe(true);
    assert_eq!(stability.tick(secs(61), true), Tick::Wait, "not unstable for 60 s, only for 1 s");
    assert_eq!(stability.tick(secs(62), true), Tick::Decide);
}
