//! The lecture hall's rules: raised hands, promotion, demotion and kicks,
//! as the room layer decides them.

use super::*;

/// A listening moderator's grants: moderates, may not publish.
const LISTENING_MODERATOR: Rights = Rights {
    can_publish: false,
    can_moderate: true,
};

/// The `hands` queues `sent` has for `peer`, as peer ids.
fn hands_told_to(sent: &[(PeerId, ServerMsg)], peer: u64) -> Vec<Vec<u64>> {
    to(sent, peer)
        .into_iter()
        .filter_map(|m| match m {
            ServerMsg::Hands { queue } => Some(queue.iter().map(|h| h.peer).collect()),
            _ => None,
        })
        .collect()
}

/// A hall with two moderators: host (1, speaks) and a listening moderator
/// (2), and listeners 3, 4, 5.
fn moderated_hall(rooms: &mut Rooms) {
    join_with(rooms, 1, "hall", "host", Role::Speaker, MODERATOR);
    join_with(
        rooms,
        2,
        "hall",
        "usher",
        Role::Listener,
        LISTENING_MODERATOR,
    );
    for p in 3..=5 {
        join(rooms, p, "hall", &format!("l{p}"), Role::Listener);
    }
    sent(rooms);
}

#[test]
fn raised_hands_reach_the_moderators_in_order_and_each_member_its_own() {
    let mut rooms = Rooms::new();
    moderated_hall(&mut rooms);
    join_with(
        &mut rooms,
        9,
        "other",
        "elsewhere",
        Role::Speaker,
        MODERATOR,
    );
    sent(&mut rooms);
    let t0 = Instant::now();

    assert_eq!(rooms.handle_hand(PeerId(4), true), Ok(()));
    assert_eq!(rooms.handle_hand(PeerId(3), true), Ok(()));
    let s = sent(&mut rooms);
    assert_eq!(to(&s, 4), [ServerMsg::Hand { raised: true }]);
    assert_eq!(to(&s, 3), [ServerMsg::Hand { raised: true }]);
    assert!(to(&s, 1).is_empty(), "moderators hear at the next poll");

    assert_eq!(rooms.poll_hands(t0), None);
    let s = sent(&mut rooms);
    assert_eq!(hands_told_to(&s, 1), [vec![4, 3]]);
    assert_eq!(hands_told_to(&s, 2), [vec![4, 3]]);
    assert!(
        matches!(&to(&s, 1)[..], [ServerMsg::Hands { queue }] if queue[0].identity == "l4"),
        "{s:?}"
    );
    for peer in [3, 4, 5, 9] {
        assert!(
            to(&s, peer).is_empty(),
            "member {peer} is no moderator here"
        );
    }

    // Raising again changes nothing and tells nobody.
    assert_eq!(rooms.handle_hand(PeerId(4), true), Ok(()));
    assert_eq!(rooms.handle_hand(PeerId(5), false), Ok(()));
    assert!(sent(&mut rooms).is_empty());
    assert_eq!(rooms.poll_hands(t0 + HANDS_INTERVAL), None);
    assert!(sent(&mut rooms).is_empty());
    assert_eq!(rooms.hands("hall"), [PeerId(4), PeerId(3)]);

    assert_eq!(
        rooms.handle_hand(PeerId(1), true),
        Err(HandError::AlreadySpeaker)
    );
    assert_eq!(
        rooms.handle_hand(PeerId(77), true),
        Err(HandError::NotJoined)
    );
}

#[test]
fn hand_queues_go_out_at_most_once_an_interval_with_the_latest_queue() {
    let mut rooms = Rooms::new();
    moderated_hall(&mut rooms);
    let t0 = Instant::now();
    rooms.handle_hand(PeerId(3), true).unwrap();
    rooms.poll_hands(t0);
    sent(&mut rooms);
    // A listener toggling fast: one message, with the queue as it is then.
    for _ in 0..50 {
        rooms.handle_hand(PeerId(4), true).unwrap();
        rooms.handle_hand(PeerId(4), false).unwrap();
    }
    rooms.handle_hand(PeerId(5), true).unwrap();
    let half = t0 + HANDS_INTERVAL / 2;
    assert_eq!(rooms.poll_hands(half), Some(t0 + HANDS_INTERVAL));
    assert!(hands_told_to(&sent(&mut rooms), 1).is_empty());
    assert_eq!(rooms.poll_hands(t0 + HANDS_INTERVAL), None);
    assert_eq!(hands_told_to(&sent(&mut rooms), 1), [vec![3, 5]]);
}

#[test]
fn promotion_lowers_the_hand_and_demotion_returns_to_listening() {
    let mut rooms = Rooms::new();
    moderated_hall(&mut rooms);
    let t0 = Instant::now();
    rooms.handle_hand(PeerId(3), true).unwrap();
    rooms.handle_hand(PeerId(4), true).unwrap();
    rooms.poll_hands(t0);
    sent(&mut rooms);

    let promote = Moderation::SetRole(Role::Speaker);
    // The listening moderator may not open the stage; the host may.
    assert_eq!(
        rooms.moderation(PeerId(2), PeerId(3), &promote).map(|_| ()),
        Err(ModerateError::BeyondOwnGrant)
    );
    let command = rooms.moderation(PeerId(1), PeerId(3), &promote).unwrap();
    assert!(matches!(
        command,
        Command::SetRole {
            peer: PeerId(3),
            role: Role::Speaker
        }
    ));
    rooms.handle_moderated(PeerId(3), promote);
    let s = sent(&mut rooms);
    assert!(
        to(&s, 3).contains(&ServerMsg::Hand { raised: false }),
        "{s:?}"
    );
    assert!(matches!(
        &to(&s, 5)[..],
        [ServerMsg::MemberUpdated { member }] if member.peer == 3 && member.role == "speaker"
    ));
    assert_eq!(rooms.member(PeerId(3)).unwrap().role, Role::Speaker);
    rooms.poll_hands(t0 + HANDS_INTERVAL);
    assert_eq!(hands_told_to(&sent(&mut rooms), 1), [vec![4]]);

    // A speaker raises no hand; demoted, it listens (and may raise again).
    assert_eq!(
        rooms.handle_hand(PeerId(3), true),
        Err(HandError::AlreadySpeaker)
    );
    let demote = Moderation::SetRole(Role::Listener);
    assert!(matches!(
        rooms.moderation(PeerId(2), PeerId(3), &demote),
        Ok(Command::SetRole {
            peer: PeerId(3),
            role: Role::Listener
        })
    ));
    rooms.handle_moderated(PeerId(3), demote);
    assert_eq!(rooms.member(PeerId(3)).unwrap().role, Role::Listener);
    assert_eq!(rooms.handle_hand(PeerId(3), true), Ok(()));
}

#[test]
fn leaving_lowers_the_hand_and_late_moderators_learn_the_queue() {
    let mut rooms = Rooms::new();
    moderated_hall(&mut rooms);
    let t0 = Instant::now();
    rooms.handle_hand(PeerId(3), true).unwrap();
    rooms.handle_hand(PeerId(5), true).unwrap();
    rooms.poll_hands(t0);
    sent(&mut rooms);
    leave(&mut rooms, 3, LeaveReason::Disconnected);
    rooms.poll_hands(t0 + HANDS_INTERVAL);
    assert_eq!(hands_told_to(&sent(&mut rooms), 1), [vec![5]]);
    assert_eq!(rooms.hands("hall"), [PeerId(5)]);

    join_with(&mut rooms, 6, "hall", "late", Role::Speaker, MODERATOR);
    join(&mut rooms, 7, "hall", "late listener", Role::Listener);
    let s = sent(&mut rooms);
    assert_eq!(hands_told_to(&s, 6), [vec![5]]);
    assert!(hands_told_to(&s, 7).is_empty());
    // A moderator who left hears no more.
    leave(&mut rooms, 6, LeaveReason::Left);
    rooms.handle_hand(PeerId(4), true).unwrap();
    rooms.poll_hands(t0 + 2 * HANDS_INTERVAL);
    let s = sent(&mut rooms);
    assert_eq!(hands_told_to(&s, 2), [vec![5, 4]]);
    assert!(hands_told_to(&s, 6).is_empty());
}

#[test]
fn a_channel_holds_a_bounded_number_of_hands() {
    let mut rooms = Rooms::new();
    join_with(&mut rooms, 1, "hall", "host", Role::Speaker, MODERATOR);
    let n = MAX_RAISED_HANDS as u64;
    for p in 2..=n + 2 {
        join(&mut rooms, p, "hall", &format!("l{p}"), Role::Listener);
    }
    for p in 2..n + 2 {
        assert_eq!(rooms.handle_hand(PeerId(p), true), Ok(()));
    }
    assert_eq!(
        rooms.handle_hand(PeerId(n + 2), true),
        Err(HandError::Full(MAX_RAISED_HANDS))
    );
    leave(&mut rooms, 2, LeaveReason::Left);
    assert_eq!(rooms.handle_hand(PeerId(n + 2), true), Ok(()));
    assert_eq!(rooms.hands("hall").len(), MAX_RAISED_HANDS);
}

#[test]
fn kicks_remove_members_and_tell_them_why_but_spare_moderators() {
    let mut rooms = Rooms::new();
    moderated_hall(&mut rooms);
    join_with(
        &mut rooms,
        9,
        "other",
        "elsewhere",
        Role::Speaker,
        MODERATOR,
    );
    rooms.handle_hand(PeerId(4), true).unwrap();
    sent(&mut rooms);
    let kick = Moderation::Kick {
        reason: Some("off topic".into()),
    };
    let by = |rooms: &Rooms, m: u64, t: u64| rooms.moderation(PeerId(m), PeerId(t), &kick);
    assert_eq!(by(&rooms, 3, 4).map(|_| ()), Err(ModerateError::Forbidden));
    assert_eq!(by(&rooms, 9, 4).map(|_| ()), Err(ModerateError::NotFound));
    assert_eq!(
        by(&rooms, 1, 2).map(|_| ()),
        Err(ModerateError::TargetModerates)
    );
    assert_eq!(
        by(&rooms, 1, 1).map(|_| ()),
        Err(ModerateError::TargetModerates)
    );
    // A listening moderator may kick: removing hands on no grant.
    assert!(matches!(
        by(&rooms, 2, 4),
        Ok(Command::Leave { peer: PeerId(4) })
    ));

    rooms.handle_moderated(PeerId(4), kick.clone());
    assert!(
        sent(&mut rooms).is_empty(),
        "told when the engine removed it"
    );
    leave(&mut rooms, 4, LeaveReason::Left);
    let s = sent(&mut rooms);
    assert_eq!(
        to(&s, 4),
        [ServerMsg::MemberLeft {
            peer: 4,
            reason: "kicked".into(),
            message: Some("off topic".into()),
        }]
    );
    for peer in [1, 2, 3, 5] {
        assert_eq!(
            to(&s, peer),
            [ServerMsg::MemberLeft {
                peer: 4,
                reason: "kicked".into(),
                message: None,
            }],
            "member {peer}"
        );
    }
    assert!(to(&s, 9).is_empty());
    assert!(rooms.member(PeerId(4)).is_none());
    assert!(rooms.hands("hall").is_empty(), "its hand went with it");
}
