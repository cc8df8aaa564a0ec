//! The room layer's side of hybrid channels: P2P members without an engine
//! session, the signaling relay's rules, and a channel's way to the SFU
//! and back (sessions opened with `sfu_join`, ended by the room layer
//! without ending the members).

use super::*;
use crate::protocol::SignalData;
use crate::rooms::mode::{HybridSettings, Mode};

fn hybrid(p2p_max: usize, return_at: usize) -> Rooms {
    let mut rooms = Rooms::new();
    let settings = HybridSettings {
        enabled: true,
        p2p_max,
        p2p_return_at: return_at,
        p2p_return_after: Duration::from_secs(1),
        ..HybridSettings::default()
    };
    rooms.set_hybrid(settings, t0());
    rooms
}

/// A capable member joins `channel` as the worker does it: P2P at once,
/// else the engine's answer.
fn join_capable(rooms: &mut Rooms, peer: u64, channel: &str, now: Instant) -> Joined {
    let p = PeerId(peer);
    let mode = rooms.preview_mode(channel, Capability::P2p, now);
    rooms.handle_join(
        p,
        channel.into(),
        format!("m{peer}"),
        Role::Speaker,
        Rights::default(),
        Capability::P2p,
    );
    match mode {
        Mode::P2p => rooms.answer_p2p(p, now).expect("a P2P join completes"),
        Mode::Sfu => rooms
            .handle_event(
                Event::Answer {
                    peer: p,
                    source: voice_of(peer),
                    slots: 3,
                    sdp: "answer".into(),
                },
                now,
            )
            .expect("the answer completes the join"),
    }
}

fn offer() -> SignalData {
    SignalData::Offer { sdp: "v=0".into() }
}

fn to(sent: &[(PeerId, ServerMsg)], peer: u64) -> Vec<ServerMsg> {
    sent.iter()
        .filter(|(p, _)| *p == PeerId(peer))
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn p2p_members_have_no_engine_session_and_are_announced_at_once() {
    let mut rooms = hybrid(7, 5);
    let a = join_capable(&mut rooms, 1, "huddle", t0());
    assert_eq!(
        (a.mode, a.epoch, a.source, a.answer.as_str()),
        (Mode::P2p, 1, SourceId(0), "")
    );
    let b = join_capable(&mut rooms, 2, "huddle", t0());
    assert_eq!(b.mode, Mode::P2p);
    assert_eq!(b.members.len(), 2, "the joiner learns whom to connect to");
    let sent = sent(&mut rooms);
    assert!(
        to(&sent, 1)
            .iter()
            .any(|m| matches!(m, ServerMsg::MemberJoined { member } if member.peer == 2)),
        "{sent:?}"
    );
    assert!(!rooms.member(PeerId(1)).unwrap().in_engine);
    assert!(rooms.take_commands().next().is_none());
    // Hybrid off: a client that says it can is still on the SFU.
    let mut off = Rooms::new();
    let c = join_capable(&mut off, 3, "huddle", t0());
    assert_eq!(c.mode, Mode::Sfu);
}

#[test]
fn signals_go_to_the_other_member_under_the_rules() {
    let mut rooms = hybrid(7, 5);
    join_capable(&mut rooms, 1, "huddle", t0());
    join_capable(&mut rooms, 2, "huddle", t0());
    join_capable(&mut rooms, 3, "other", t0());
    sent(&mut rooms);
    let (a, b, c) = (PeerId(1), PeerId(2), PeerId(3));
    assert_eq!(rooms.handle_signal(a, b, 1, offer(), t0()), Ok(()));
    let got = sent(&mut rooms);
    assert_eq!(
        got,
        vec![(
            b,
            ServerMsg::Signal {
                from: 1,
                epoch: 1,
                data: offer()
            }
        )]
    );
    // The higher id answers, never offers; the lower never answers.
    assert_eq!(
        rooms.handle_signal(b, a, 1, offer(), t0()),
        Err(SignalError::Glare)
    );
    let answer = SignalData::Answer { sdp: "v=0".into() };
    assert_eq!(
        rooms.handle_signal(a, b, 1, answer.clone(), t0()),
        Err(SignalError::Glare)
    );
    assert_eq!(rooms.handle_signal(b, a, 1, answer, t0()), Ok(()));
    // Another channel, oneself, nobody, a stale epoch.
    assert_eq!(
        rooms.handle_signal(a, c, 1, offer(), t0()),
        Err(SignalError::NotMember)
    );
    assert_eq!(
        rooms.handle_signal(a, a, 1, offer(), t0()),
        Err(SignalError::NotMember)
    );
    assert_eq!(
        rooms.handle_signal(PeerId(9), a, 1, offer(), t0()),
        Err(SignalError::NotMember)
    );
    assert_eq!(
        rooms.handle_signal(a, b, 7, offer(), t0()),
        Err(SignalError::Stale { got: 7, current: 1 })
    );
    // A burst, then the rate.
    let candidate = SignalData::Candidate {
        candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
        sdp_mid: None,
        sdp_mline_index: None,
    };
    let mut relayed = 0;
    for _ in 0..200 {
        if rooms
            .handle_signal(a, b, 1, candidate.clone(), t0())
            .is_ok()
        {
            relayed += 1;
        }
    }
    assert_eq!(relayed, SIGNALS_BURST as usize - 1, "the offer took one");
    let later = t0() + Duration::from_secs(1);
    assert_eq!(rooms.handle_signal(a, b, 1, candidate, later), Ok(()));
    let c = rooms.hybrid_counters();
    assert_eq!(c.signals.get("offer"), Some(&1));
    assert_eq!(c.signals.get("answer"), Some(&1));
    assert_eq!(c.signals_dropped.get("glare"), Some(&2));
    assert_eq!(c.signals_dropped.get("not_member"), Some(&3));
    assert_eq!(c.signals_dropped.get("stale"), Some(&1));
    assert_eq!(c.signals_dropped.get("rate"), Some(&(200 - 99)));
}

#[test]
fn a_channel_goes_to_the_sfu_and_back_keeping_its_members() {
    let mut rooms = hybrid(2, 2);
    join_capable(&mut rooms, 1, "huddle", t0());
    join_capable(&mut rooms, 2, "huddle", t0());
    // The third joins over p2p_max: the SFU, and a switch up (epoch 2).
    let third = join_capable(&mut rooms, 3, "huddle", t0());
    assert_eq!((third.mode, third.epoch), (Mode::Sfu, 2));
    let sent = sent(&mut rooms);
    for p in [1, 2] {
        assert!(
            to(&sent, p).contains(&ServerMsg::Mode {
                mode: "sfu",
                reason: "size",
                epoch: 2
            }),
            "{sent:?}"
        );
    }
    // Signals are refused on the SFU; sfu_join is for the switch's epoch.
    assert_eq!(
        rooms.handle_signal(PeerId(1), PeerId(2), 2, offer(), t0()),
        Err(SignalError::WrongMode)
    );
    assert_eq!(
        rooms.sfu_join(PeerId(1), 1),
        Err(SfuJoinError::Stale { got: 1, current: 2 })
    );
    assert_eq!(
        rooms.sfu_join(PeerId(3), 2),
        Err(SfuJoinError::AlreadyJoined)
    );
    for p in [1, 2] {
        rooms.sfu_join(PeerId(p), 2).unwrap();
        rooms.sfu_joining(PeerId(p));
        let answer = Event::Answer {
            peer: PeerId(p),
            source: voice_of(p),
            slots: 3,
            sdp: format!("answer {p}"),
        };
        assert_eq!(rooms.handle_event(answer, t0()), None, "not a new join");
    }
    let sent = super::sent(&mut rooms);
    assert!(to(&sent, 1).contains(&ServerMsg::SfuJoined {
        answer: "answer 1".into(),
        source: voice_of(1).0,
        slots: 3,
        epoch: 2
    }));
    assert!(to(&sent, 3).iter().any(|m| matches!(m, ServerMsg::MemberUpdated { member } if member.peer == 2 && member.source == voice_of(2).0)));
    let t1 = t0() + Duration::from_millis(300);
    rooms.handle_switched(PeerId(1), Mode::Sfu, 2, t1).unwrap();
    assert!(
        super::sent(&mut rooms).is_empty(),
        "one member still plays the mesh"
    );
    rooms.handle_switched(PeerId(2), Mode::Sfu, 2, t1).unwrap();
    let done = ServerMsg::Switched {
        mode: "sfu",
        epoch: 2,
        stragglers: vec![],
    };
    assert!(to(&super::sent(&mut rooms), 1).contains(&done));
    let switches: Vec<(Mode, Duration)> = rooms.take_switches().collect();
    assert_eq!(switches, vec![(Mode::Sfu, Duration::from_millis(300))]);

    // The third leaves: two members, and after a second back to P2P.
    assert_eq!(rooms.remove(PeerId(3), LeaveReason::Left, t1), Some(true));
    assert!(rooms.poll_mode(t1 + Duration::from_millis(900)).is_some());
    assert!(!super::sent(&mut rooms)
        .iter()
        .any(|(_, m)| matches!(m, ServerMsg::Mode { .. })));
    let t2 = t1 + Duration::from_secs(1);
    rooms.poll_mode(t2);
    let down = ServerMsg::Mode {
        mode: "p2p",
        reason: "small",
        epoch: 3,
    };
    assert!(to(&super::sent(&mut rooms), 2).contains(&down));
    for p in [1, 2] {
        rooms.handle_switched(PeerId(p), Mode::P2p, 3, t2).unwrap();
    }
    // The switch is complete: the room layer ends both SFU sessions...
    let ends: Vec<Command> = rooms.take_commands().collect();
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert_eq!(
        rooms.hybrid_counters().p2p_sessions,
        0,
        "sessions being closed do not count"
    );
    for p in [1, 2] {
        rooms.handle_event(
            Event::PeerLeft {
                peer: PeerId(p),
                reason: LeaveReason::Left,
            },
            t2,
        );
    }
    // ...and the members stay, without a voice, told so.
    let sent = super::sent(&mut rooms);
    assert!(
        !sent
            .iter()
            .any(|(_, m)| matches!(m, ServerMsg::MemberLeft { .. })),
        "{sent:?}"
    );
    assert!(to(&sent, 1).iter().any(|m| matches!(m, ServerMsg::MemberUpdated { member } if member.peer == 2 && member.source == 0)));
    let m = rooms.member(PeerId(1)).unwrap();
    assert!(!m.in_engine && m.source.is_none());
    assert_eq!(rooms.member_count("huddle"), 2);
    // A later departure of the engine peer's id is a real one again.
    assert_eq!(rooms.remove(PeerId(1), LeaveReason::Left, t2), Some(false));
    assert_eq!(rooms.member_count("huddle"), 1);
}
