//! A channel spread over two workers: two room layers that hand each other
//! their parts (as the workers do), and what their members are told.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::*;

/// Two workers' room layers of one node, numbered 0 and 1, sharing the
/// node's hand counter; a channel spreads past 2 members.
fn two_workers() -> (Rooms, Rooms) {
    let clock = Arc::new(AtomicU64::new(1));
    let (mut a, mut b) = (Rooms::new(), Rooms::new());
    a.set_siblings(0, &[1], 2, clock.clone());
    b.set_siblings(1, &[0], 2, clock);
    (a, b)
}

/// Hands every part `from` has to `to`; how many there were.
fn exchange(from: &mut Rooms, to: &mut Rooms) -> usize {
    let parts = from.take_parts();
    let n = parts.len();
    for p in parts {
        to.handle_part(p, t0());
    }
    n
}

/// Until neither has anything more to tell.
fn settle(a: &mut Rooms, b: &mut Rooms) {
    for _ in 0..8 {
        if exchange(a, b) + exchange(b, a) == 0 {
            return;
        }
    }
    panic!("the parts never settle");
}

#[test]
fn the_members_of_both_workers_see_one_room() {
    let (mut a, mut b) = two_workers();
    join_with(&mut a, 1, "hall", "host", Role::Speaker, MODERATOR);
    assert_eq!(
        a.take_parts(),
        [],
        "a channel below spread_after tells nobody"
    );
    join(&mut a, 2, "hall", "ann", Role::Listener);
    // It may spread now: its part goes to the other workers.
    assert_eq!(exchange(&mut a, &mut b), 1);
    sent(&mut a);
    // Worker 1 gets a member of the spread channel.
    b.mark_spread("hall");
    let joined = join(&mut b, 3, "hall", "bo", Role::Speaker);
    let mut listed: Vec<u64> = joined.members.iter().map(|m| m.peer).collect();
    listed.sort_unstable();
    assert_eq!(listed, [1, 2, 3], "bo's list holds worker 0's members");
    assert_eq!(joined.member_count, 3);
    settle(&mut a, &mut b);
    let told = sent(&mut a);
    assert_eq!(joined_told_to(&told, 1), ["bo"]);
    assert_eq!(joined_told_to(&told, 2), ["bo"]);
    // The count is the channel's on both workers.
    a.poll_member_counts(t0());
    let counts: Vec<ServerMsg> = to(&sent(&mut a), 1);
    assert!(
        counts.contains(&ServerMsg::MemberCount { count: 3 }),
        "{counts:?}"
    );
    // Bo leaves: worker 0's members are told, with the reason.
    leave(&mut b, 3, LeaveReason::Disconnected);
    settle(&mut a, &mut b);
    let told = sent(&mut a);
    assert_eq!(left_told_to(&told, 2), [3]);
    assert!(told.iter().any(|(_, m)| matches!(m,
        ServerMsg::MemberLeft { peer: 3, reason, .. } if reason == "disconnected")));
    assert_eq!(a.channel_members("hall"), 2, "worker 1's part is gone");
}

/// A member that joins another worker before the origin's part arrived
/// learns the origin's members right after its `joined`.
#[test]
fn a_member_that_joins_before_the_part_arrived_learns_the_rest_after() {
    let (mut a, mut b) = two_workers();
    join(&mut a, 1, "hall", "host", Role::Speaker);
    join(&mut a, 2, "hall", "ann", Role::Speaker);
    a.take_parts(); // lost on the way
    b.mark_spread("hall");
    let joined = join(&mut b, 3, "hall", "bo", Role::Speaker);
    assert_eq!(joined.members.len(), 1);
    sent(&mut b);
    settle(&mut a, &mut b);
    let told = sent(&mut b);
    assert_eq!(joined_told_to(&told, 3), ["host", "ann"]);
}

#[test]
fn hands_of_both_workers_reach_the_moderator_in_the_order_raised() {
    let (mut a, mut b) = two_workers();
    join_with(&mut a, 1, "hall", "host", Role::Speaker, MODERATOR);
    join(&mut a, 2, "hall", "ann", Role::Listener);
    b.mark_spread("hall");
    join(&mut b, 3, "hall", "bo", Role::Listener);
    settle(&mut a, &mut b);
    b.handle_hand(PeerId(3), true).unwrap();
    settle(&mut a, &mut b);
    a.handle_hand(PeerId(2), true).unwrap();
    sent(&mut a);
    a.poll_hands(t0());
    let hands: Vec<u64> = to(&sent(&mut a), 1)
        .into_iter()
        .find_map(|m| match m {
            ServerMsg::Hands { queue } => Some(queue.iter().map(|h| h.peer).collect()),
            _ => None,
        })
        .expect("the moderator gets the hands");
    assert_eq!(hands, [3, 2], "bo raised first, on the other worker");
}

#[test]
fn moderation_of_a_member_elsewhere_is_checked_on_both_sides() {
    let (mut a, mut b) = two_workers();
    join_with(&mut a, 1, "hall", "host", Role::Speaker, MODERATOR);
    join(&mut a, 2, "hall", "ann", Role::Listener);
    b.mark_spread("hall");
    join_with(&mut b, 3, "hall", "mod", Role::Speaker, MODERATOR);
    join(&mut b, 4, "hall", "bo", Role::Speaker);
    settle(&mut a, &mut b);
    let mute = Moderation::Mute(true);
    // The moderator's side, here: a listener may not moderate.
    assert_eq!(
        a.moderation_elsewhere(PeerId(2), &mute),
        Err(ModerateError::Forbidden)
    );
    let channel = a.moderation_elsewhere(PeerId(1), &mute).unwrap();
    // The target's side, there: bo may be muted, a moderator not kicked,
    // and a member of another channel is not found.
    assert!(matches!(
        b.moderation_for(&channel, PeerId(4), &mute),
        Ok(Command::SetMuted {
            peer: PeerId(4),
            muted: true
        })
    ));
    let kick = Moderation::Kick { reason: None };
    assert!(matches!(
        b.moderation_for(&channel, PeerId(3), &kick),
        Err(ModerateError::TargetModerates)
    ));
    assert!(matches!(
        b.moderation_for("other", PeerId(4), &mute),
        Err(ModerateError::NotFound)
    ));
    // Applied there, every member here sees it.
    b.handle_moderated(PeerId(4), mute);
    settle(&mut a, &mut b);
    let told = sent(&mut a);
    assert!(told.iter().any(|(p, m)| *p == PeerId(2)
        && matches!(m, ServerMsg::MemberUpdated { member } if member.peer == 4 && member.muted)));
}

#[test]
fn a_part_lost_to_a_full_queue_goes_again() {
    let (mut a, mut b) = two_workers();
    join(&mut a, 1, "hall", "host", Role::Speaker);
    b.mark_spread("hall");
    join(&mut b, 2, "hall", "bo", Role::Speaker);
    let parts = b.take_parts();
    assert_eq!(parts.len(), 1);
    b.part_not_sent(&parts[0]);
    assert_eq!(b.take_parts(), parts, "the same part again");
    assert_eq!(b.take_parts(), [], "then nothing until it changes");
}

/// A worker that only heard of a spread channel forgets it when the
/// channel's last member elsewhere leaves.
#[test]
fn a_channel_known_only_from_parts_is_forgotten() {
    let (mut a, mut b) = two_workers();
    join(&mut a, 1, "hall", "host", Role::Speaker);
    join(&mut a, 2, "hall", "ann", Role::Speaker);
    assert_eq!(exchange(&mut a, &mut b), 1);
    assert!(b.is_spread("hall"));
    assert_eq!(b.channel_members("hall"), 2);
    leave(&mut a, 1, LeaveReason::Left);
    leave(&mut a, 2, LeaveReason::Left);
    assert_eq!(exchange(&mut a, &mut b), 1, "the empty part");
    assert!(!b.is_spread("hall"));
    assert_eq!(b.channel_members("hall"), 0);
    assert!(!a.is_spread("hall"));
    assert_eq!(b.take_parts(), []);
}
