//! The room rules, without sockets or an engine: joins, engine events and
//! moderation go in as calls, and the tests read who was told what.

use std::time::{Duration, Instant};

use media_core::{Command, Event, LeaveReason, PeerId, Role, SourceId};

use super::mode::SfuOnly;
use super::*;

mod hall;
mod hybrid;
mod spread;

/// The time every event of these tests happens at: one clock reading per
/// test thread, kept.
fn t0() -> Instant {
    thread_local! {
        static T0: Instant = testkit::epoch();
    }
    T0.with(|t| *t)
}

/// Every member's voice in these tests: 1000 + its peer id.
fn voice_of(peer: u64) -> SourceId {
    SourceId(1000 + peer as u32)
}

/// A moderator's grants: speaks and moderates.
const MODERATOR: Rights = Rights {
    can_publish: true,
    can_moderate: true,
};

/// `peer` joins `channel` and the engine answers.
fn join(rooms: &mut Rooms, peer: u64, channel: &str, identity: &str, role: Role) -> Joined {
    join_with(rooms, peer, channel, identity, role, Rights::default())
}

fn join_with(
    rooms: &mut Rooms,
    peer: u64,
    channel: &str,
    identity: &str,
    role: Role,
    rights: Rights,
) -> Joined {
    let p = PeerId(peer);
    rooms.handle_join(
        p,
        channel.into(),
        identity.into(),
        role,
        rights,
        Capability::SfuOnly(SfuOnly::Client),
    );
    let joined = rooms
        .handle_event(
            Event::Answer {
                peer: p,
                source: voice_of(peer),
                slots: 3,
                sdp: format!("answer {peer}"),
            },
            t0(),
        )
        .expect("the answer completes the join");
    assert_eq!((joined.peer, joined.source), (p, voice_of(peer)));
    joined
}

fn leave(rooms: &mut Rooms, peer: u64, reason: LeaveReason) {
    rooms.handle_event(
        Event::PeerLeft {
            peer: PeerId(peer),
            reason,
        },
        t0(),
    );
}

/// The messages queued since the last call.
fn sent(rooms: &mut Rooms) -> Vec<(PeerId, ServerMsg)> {
    rooms.take_messages().collect()
}

/// The messages of `sent` addressed to `peer`.
fn to(sent: &[(PeerId, ServerMsg)], peer: u64) -> Vec<ServerMsg> {
    sent.iter()
        .filter(|(p, _)| *p == PeerId(peer))
        .map(|(_, m)| m.clone())
        .collect()
}

/// Who `peer` was told joined, in order.
fn joined_told_to(sent: &[(PeerId, ServerMsg)], peer: u64) -> Vec<String> {
    to(sent, peer)
        .into_iter()
        .filter_map(|m| match m {
            ServerMsg::MemberJoined { member } => Some(member.identity),
            _ => None,
        })
        .collect()
}

/// Whose departure `peer` was told of.
fn left_told_to(sent: &[(PeerId, ServerMsg)], peer: u64) -> Vec<u64> {
    to(sent, peer)
        .into_iter()
        .filter_map(|m| match m {
            ServerMsg::MemberLeft { peer, .. } => Some(peer),
            _ => None,
        })
        .collect()
}

/// A hall: host (peer 1, a speaker who may moderate) and listeners l0, l1…
/// as peers 2, 3…; returns the last listener's `Joined`.
fn hall(rooms: &mut Rooms, listeners: u64) -> Option<Joined> {
    join_with(rooms, 1, "hall", "host", Role::Speaker, MODERATOR);
    (0..listeners)
        .map(|i| join(rooms, i + 2, "hall", &format!("l{i}"), Role::Listener))
        .last()
}

#[test]
fn listeners_are_listed_up_to_the_limit_then_only_counted() {
    assert_eq!(LISTED_LISTENERS_UP_TO, 100);
    let mut rooms = Rooms::new();
    // Members 1..=105: the host and listeners l0..l103; l98 is the 100th
    // member (listed), l99 the 101st (not).
    let last = hall(&mut rooms, 104).unwrap();
    assert_eq!(last.member_count, 105);
    assert_eq!(
        last.members.len(),
        101,
        "100 listed members and the joiner itself"
    );
    assert!(last.members.iter().any(|m| m.identity == "l103"));
    assert!(last.members.iter().any(|m| m.identity == "l98"));
    assert!(!last.members.iter().any(|m| m.identity == "l99"));
    assert!(rooms.member(PeerId(100)).unwrap().listed, "l98");
    assert!(!rooms.member(PeerId(101)).unwrap().listed, "l99");

    // The host heard of l0..l98 one by one, and of nobody else.
    let sent = sent(&mut rooms);
    let expected: Vec<String> = (0..99).map(|i| format!("l{i}")).collect();
    assert_eq!(joined_told_to(&sent, 1), expected);
    // Nobody is told of themselves; l0 heard of l1..l98.
    assert_eq!(joined_told_to(&sent, 2).len(), 98);
    assert!(joined_told_to(&sent, 105).is_empty());
}

#[test]
fn speakers_are_listed_in_a_hall_of_any_size() {
    let mut rooms = Rooms::new();
    hall(&mut rooms, 150);
    sent(&mut rooms);
    let late = join(&mut rooms, 500, "hall", "late", Role::Speaker);
    assert_eq!(late.member_count, 152);
    assert!(rooms.member(PeerId(500)).unwrap().listed);
    let sent = sent(&mut rooms);
    assert_eq!(joined_told_to(&sent, 1), ["late"]);
    assert_eq!(joined_told_to(&sent, 151), ["late"], "an unlisted listener");
    assert!(joined_told_to(&sent, 500).is_empty());
    // The speaker's own list: the 100 listed members before it, and itself.
    assert_eq!(late.members.len(), 101);
    assert_eq!(late.members.last().unwrap().identity, "late");
}

#[test]
fn a_listener_made_speaker_is_announced_then() {
    let mut rooms = Rooms::new();
    hall(&mut rooms, 104);
    sent(&mut rooms);
    let unlisted = PeerId(103); // l101
    let command = rooms
        .moderation(PeerId(1), unlisted, &Moderation::SetRole(Role::Speaker))
        .unwrap();
    assert!(matches!(
        command,
        Command::SetRole { peer, role: Role::Speaker } if peer == unlisted
    ));
    rooms.handle_moderated(unlisted, Moderation::SetRole(Role::Speaker));
    let sent = sent(&mut rooms);
    assert_eq!(sent.len(), 105, "everyone, the new speaker included");
    for (_, msg) in &sent {
        let ServerMsg::MemberJoined { member } = msg else {
            panic!("announced as a join: {msg:?}");
        };
        assert_eq!(
            (member.identity.as_str(), member.role.as_str()),
            ("l101", "speaker")
        );
    }
    assert!(rooms.member(unlisted).unwrap().listed);

    // Listed now: its next change is an update for everyone, and so is
    // its departure.
    rooms.handle_moderated(unlisted, Moderation::Mute(true));
    let sent = self::sent(&mut rooms);
    assert_eq!(sent.len(), 105);
    assert!(sent
        .iter()
        .all(|(_, m)| matches!(m, ServerMsg::MemberUpdated { member } if member.muted)));
    leave(&mut rooms, 103, LeaveReason::Left);
    let sent = self::sent(&mut rooms);
    assert_eq!(left_told_to(&sent, 1), [103]);
    assert_eq!(left_told_to(&sent, 105), [103]);
}

#[test]
fn an_unlisted_listener_hears_of_its_own_changes_alone() {
    let mut rooms = Rooms::new();
    hall(&mut rooms, 104);
    sent(&mut rooms);
    let unlisted = PeerId(104);
    rooms.handle_moderated(unlisted, Moderation::Mute(true));
    let sent = sent(&mut rooms);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, unlisted);
    assert!(matches!(&sent[0].1, ServerMsg::MemberUpdated { member } if member.muted));
    assert!(!rooms.member(unlisted).unwrap().listed);
}

#[test]
fn unlisted_leavers_are_counted_not_announced() {
    let mut rooms = Rooms::new();
    hall(&mut rooms, 104);
    sent(&mut rooms);
    leave(&mut rooms, 102, LeaveReason::Left); // l100
    let sent = sent(&mut rooms);
    assert_eq!(
        sent,
        [(
            PeerId(102),
            ServerMsg::MemberLeft {
                peer: 102,
                reason: "left".into(),
                message: None,
            }
        )],
        "only the leaver itself is told (its session ends on it)"
    );
    rooms.poll_member_counts(Instant::now());
    let counts = self::sent(&mut rooms);
    assert_eq!(counts.len(), 104);
    assert!(counts
        .iter()
        .all(|(_, m)| *m == ServerMsg::MemberCount { count: 104 }));
}

#[test]
fn listed_leavers_are_announced_to_everyone() {
    let mut rooms = Rooms::new();
    hall(&mut rooms, 104);
    sent(&mut rooms);
    leave(&mut rooms, 7, LeaveReason::Disconnected); // l5, listed
    let sent = sent(&mut rooms);
    for peer in (1..=105).filter(|p| *p != 7) {
        assert_eq!(left_told_to(&sent, peer), [7], "member {peer}");
    }
    assert_eq!(
        to(&sent, 7),
        [ServerMsg::MemberLeft {
            peer: 7,
            reason: "disconnected".into(),
            message: None,
        }]
    );
    assert!(rooms.member(PeerId(7)).is_none());
    leave(&mut rooms, 8, LeaveReason::ConnectTimeout);
    assert!(matches!(
        &to(&self::sent(&mut rooms), 1)[..],
        [ServerMsg::MemberLeft { peer: 8, reason, .. }] if reason == "timeout"
    ));
}

#[test]
fn member_count_goes_out_at_most_once_a_second_per_channel_with_the_latest_count() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut rooms = Rooms::new();
    let count_of = |sent: &[(PeerId, ServerMsg)], peer: u64| -> Vec<usize> {
        to(sent, peer)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::MemberCount { count } => Some(count),
                _ => None,
            })
            .collect()
    };
    join(&mut rooms, 1, "x", "a", Role::Speaker);
    assert_eq!(rooms.poll_member_counts(t0), None, "sent, nothing waits");
    assert_eq!(count_of(&sent(&mut rooms), 1), [1]);

    join(&mut rooms, 2, "x", "b", Role::Listener);
    assert_eq!(rooms.poll_member_counts(t0 + ms(100)), Some(t0 + ms(1000)));
    join(&mut rooms, 3, "x", "c", Role::Listener);
    // Another channel has its own interval.
    join(&mut rooms, 4, "y", "d", Role::Speaker);
    assert_eq!(rooms.poll_member_counts(t0 + ms(500)), Some(t0 + ms(1000)));
    let sent_early = sent(&mut rooms);
    assert!(count_of(&sent_early, 1).is_empty());
    assert!(count_of(&sent_early, 2).is_empty());
    assert_eq!(count_of(&sent_early, 4), [1]);

    // Due: once, with the count as it is now.
    assert_eq!(rooms.poll_member_counts(t0 + ms(1000)), None);
    let due = sent(&mut rooms);
    for peer in 1..=3 {
        assert_eq!(count_of(&due, peer), [3], "member {peer}");
    }
    assert!(count_of(&due, 4).is_empty());

    // Nothing changed: nothing goes out.
    assert_eq!(rooms.poll_member_counts(t0 + ms(5000)), None);
    assert!(sent(&mut rooms).is_empty());
    // A change long after the last count goes out at once.
    leave(&mut rooms, 3, LeaveReason::Left);
    sent(&mut rooms);
    assert_eq!(rooms.poll_member_counts(t0 + ms(6000)), None);
    assert_eq!(count_of(&sent(&mut rooms), 1), [2]);
}

#[test]
fn late_joiners_learn_who_speaks_and_the_voices_of_other_nodes() {
    let mut rooms = Rooms::new();
    join(&mut rooms, 1, "town", "alice", Role::Speaker);
    join(&mut rooms, 2, "town", "bob", Role::Speaker);
    sent(&mut rooms);
    let remote = SourceId(77);
    let channel: std::sync::Arc<str> = "town".into();
    rooms.handle_event(
        Event::ActiveSpeakers {
            channel: channel.clone(),
            speakers: vec![voice_of(2), remote, voice_of(1)],
        },
        t0(),
    );
    rooms.handle_event(
        Event::DominantSpeaker {
            channel: channel.clone(),
            speaker: Some(voice_of(2)),
        },
        t0(),
    );
    for (source, identity) in [(77, "carol"), (78, "dave"), (78, "")] {
        rooms.handle_event(
            Event::RemoteSource {
                channel: channel.clone(),
                source: SourceId(source),
                identity: identity.into(),
            },
            t0(),
        );
    }
    let told = to(&sent(&mut rooms), 1);
    assert_eq!(
        told[0],
        ServerMsg::ActiveSpeakers {
            speakers: vec![2, 1],
            sources: vec![1002, 77, 1001],
        }
    );
    assert_eq!(
        told[1],
        ServerMsg::DominantSpeaker {
            peer: Some(2),
            source: Some(1002)
        }
    );
    assert_eq!(told.len(), 5, "and the three voice messages: {told:?}");

    let late = join(&mut rooms, 3, "town", "lena", Role::Listener);
    assert_eq!(late.active_speakers, [2, 1]);
    assert_eq!(late.dominant_speaker, Some(2));
    assert_eq!(late.dominant_source, Some(1002));
    assert_eq!(
        late.voices,
        [Voice {
            source: 77,
            identity: "carol".into()
        }],
        "dave's voice left"
    );
    assert_eq!(late.answer, "answer 3");
    assert_eq!(late.slots, 3);

    // A dominant speaker on another node: a voice, no peer.
    rooms.handle_event(
        Event::DominantSpeaker {
            channel,
            speaker: Some(remote),
        },
        t0(),
    );
    assert_eq!(
        to(&sent(&mut rooms), 3),
        [ServerMsg::DominantSpeaker {
            peer: None,
            source: Some(77)
        }]
    );
}

#[test]
fn moderation_needs_the_grant_and_a_target_in_the_same_channel() {
    let mut rooms = Rooms::new();
    join_with(&mut rooms, 1, "a", "mod", Role::Speaker, MODERATOR);
    join(&mut rooms, 2, "a", "s", Role::Speaker);
    join(&mut rooms, 3, "a", "plain", Role::Speaker);
    join_with(&mut rooms, 4, "b", "elsewhere", Role::Speaker, MODERATOR);
    sent(&mut rooms);
    let mute = Moderation::Mute(true);
    let check = |by: u64, target: u64| {
        rooms
            .moderation(PeerId(by), PeerId(target), &mute)
            .map(|_| ())
    };
    assert_eq!(check(3, 2), Err(ModerateError::Forbidden), "no grant");
    assert_eq!(check(99, 2), Err(ModerateError::Forbidden), "not joined");
    assert_eq!(check(1, 4), Err(ModerateError::NotFound), "other channel");
    assert_eq!(check(4, 2), Err(ModerateError::NotFound), "other channel");
    assert_eq!(check(1, 999), Err(ModerateError::NotFound), "nobody");
    let command = rooms.moderation(PeerId(1), PeerId(2), &mute).unwrap();
    assert!(matches!(
        command,
        Command::SetMuted {
            peer: PeerId(2),
            muted: true
        }
    ));
    assert!(
        !rooms.member(PeerId(2)).unwrap().muted,
        "a rule changes nothing"
    );
    assert!(sent(&mut rooms).is_empty());

    rooms.handle_moderated(PeerId(2), mute.clone());
    assert!(rooms.member(PeerId(2)).unwrap().muted);
    let sent = sent(&mut rooms);
    for peer in 1..=3 {
        assert!(
            matches!(&to(&sent, peer)[..], [ServerMsg::MemberUpdated { member }] if member.peer == 2 && member.muted),
            "member {peer}: {sent:?}"
        );
    }
    assert!(to(&sent, 4).is_empty(), "the other channel hears nothing");
}

/// A moderator whose own token may not publish may not put others on the
/// stage: moderation hands on only what the moderator's token grants.
/// Demoting, muting and unmuting stay open to it.
#[test]
fn moderators_grant_no_role_their_own_token_lacks() {
    let mut rooms = Rooms::new();
    let listening_moderator = Rights {
        can_publish: false,
        can_moderate: true,
    };
    join_with(
        &mut rooms,
        1,
        "a",
        "mod",
        Role::Listener,
        listening_moderator,
    );
    join(&mut rooms, 2, "a", "l", Role::Listener);
    join(&mut rooms, 3, "a", "s", Role::Speaker);
    join_with(&mut rooms, 4, "a", "host", Role::Speaker, MODERATOR);
    let by = |m: u64, t: u64, a: &Moderation| rooms.moderation(PeerId(m), PeerId(t), a).map(|_| ());
    let speaker = Moderation::SetRole(Role::Speaker);
    assert_eq!(by(1, 2, &speaker), Err(ModerateError::BeyondOwnGrant));
    assert_eq!(by(1, 1, &speaker), Err(ModerateError::BeyondOwnGrant));
    assert_eq!(by(1, 3, &Moderation::SetRole(Role::Listener)), Ok(()));
    assert_eq!(by(1, 3, &Moderation::Mute(true)), Ok(()));
    assert_eq!(by(1, 3, &Moderation::Mute(false)), Ok(()));
    // A moderator that may publish may promote.
    assert_eq!(by(4, 2, &speaker), Ok(()));
}

/// Joins beyond a channel's maximum of members, or that would open a
/// channel beyond the node's maximum, are refused; leaving makes room.
#[test]
fn joins_are_refused_past_the_member_and_channel_limits() {
    let mut rooms = Rooms::with_limits(RoomLimits {
        max_members_per_channel: 2,
        max_channels: 2,
    });
    assert_eq!(rooms.admit("a"), Ok(()));
    join(&mut rooms, 1, "a", "x", Role::Speaker);
    join(&mut rooms, 2, "a", "y", Role::Listener);
    assert_eq!(rooms.admit("a"), Err(RoomRefusal::ChannelFull(2)));
    assert_eq!(rooms.admit("b"), Ok(()));
    join(&mut rooms, 3, "b", "z", Role::Speaker);
    // Two channels: a third is refused, the existing ones still take
    // members while they have room.
    assert_eq!(rooms.admit("c"), Err(RoomRefusal::TooManyChannels(2)));
    assert_eq!(rooms.admit("b"), Ok(()));
    // A channel known only from engine events (a voice of another node) is
    // not one of the node's channels until someone joins it here.
    rooms.handle_event(
        Event::ActiveSpeakers {
            channel: "c".into(),
            speakers: vec![],
        },
        t0(),
    );
    assert_eq!(rooms.admit("c"), Err(RoomRefusal::TooManyChannels(2)));
    leave(&mut rooms, 3, LeaveReason::Left);
    assert_eq!(rooms.admit("c"), Ok(()));
    leave(&mut rooms, 2, LeaveReason::Disconnected);
    assert_eq!(rooms.admit("a"), Ok(()));
    // The limits count members that joined and were not answered yet.
    rooms.handle_join(
        PeerId(9),
        "a".into(),
        "w".into(),
        Role::Listener,
        Rights::default(),
        Capability::SfuOnly(SfuOnly::Client),
    );
    assert_eq!(rooms.admit("a"), Err(RoomRefusal::ChannelFull(2)));
}

#[test]
fn slots_and_connections_are_told_to_their_member_alone() {
    let mut rooms = Rooms::new();
    join(&mut rooms, 1, "c", "a", Role::Speaker);
    join(&mut rooms, 2, "c", "l", Role::Listener);
    sent(&mut rooms);
    rooms.handle_event(Event::PeerConnected { peer: PeerId(2) }, t0());
    for source in [Some(voice_of(1)), Some(SourceId(77)), None] {
        rooms.handle_event(
            Event::SlotChanged {
                peer: PeerId(2),
                slot: 1,
                mid: "2".into(),
                source,
            },
            t0(),
        );
    }
    // Events about peers that are not members go nowhere.
    rooms.handle_event(Event::PeerConnected { peer: PeerId(9) }, t0());
    let sent = sent(&mut rooms);
    assert!(to(&sent, 1).is_empty());
    let slot = |peer, source| ServerMsg::Slot {
        slot: 1,
        mid: "2".into(),
        peer,
        source,
    };
    assert_eq!(
        to(&sent, 2),
        [
            ServerMsg::Connected,
            slot(Some(1), Some(1001)),
            slot(None, Some(77)),
            slot(None, None),
        ]
    );
    assert_eq!(sent.len(), 4);
}

#[test]
fn drain_tells_every_member_and_refuses_joins() {
    let mut rooms = Rooms::new();
    join(&mut rooms, 1, "a", "x", Role::Speaker);
    join(&mut rooms, 2, "b", "y", Role::Listener);
    sent(&mut rooms);
    assert!(!rooms.is_draining());
    rooms.handle_drain(Duration::from_secs(30));
    assert!(rooms.is_draining());
    let mut sent = sent(&mut rooms);
    sent.sort_by_key(|(p, _)| *p);
    let shutdown = ServerMsg::Shutdown {
        reason: "the server is shutting down; join again elsewhere".into(),
        deadline_ms: 30_000,
    };
    assert_eq!(sent, [(PeerId(1), shutdown.clone()), (PeerId(2), shutdown)]);
}

#[test]
fn the_last_member_out_forgets_the_room() {
    let mut rooms = Rooms::new();
    join(&mut rooms, 1, "a", "x", Role::Speaker);
    join(&mut rooms, 2, "b", "y", Role::Listener);
    join(&mut rooms, 3, "b", "z", Role::Speaker);
    assert_eq!(
        rooms.census(),
        Census {
            channels: 2,
            members: 3,
            speakers: 2,
            listeners: 1
        }
    );
    rooms.handle_event(
        Event::ActiveSpeakers {
            channel: "a".into(),
            speakers: vec![voice_of(1)],
        },
        t0(),
    );
    leave(&mut rooms, 1, LeaveReason::Left);
    assert!(!rooms.has_members("a"));
    assert_eq!(rooms.channels().collect::<Vec<_>>(), ["b"]);
    assert_eq!(rooms.census().channels, 1);
    sent(&mut rooms);
    // Its pending count is forgotten with it; channel b's goes out.
    let now = Instant::now();
    assert_eq!(rooms.poll_member_counts(now), None);
    let counts = sent(&mut rooms);
    assert!(counts
        .iter()
        .all(|(p, m)| (*p == PeerId(2) || *p == PeerId(3))
            && *m == ServerMsg::MemberCount { count: 2 }));
    // A new member of "a" starts from nothing.
    let again = join(&mut rooms, 4, "a", "w", Role::Listener);
    assert!(again.active_speakers.is_empty());
    assert_eq!(again.member_count, 1);
    assert_eq!(again.members.len(), 1);
}
