//! The mode policy, without sockets: joins, leaves, reports, settings and
//! time go in as calls; the tests read the assignments and decisions.

use std::time::{Duration, Instant};

use media_core::PeerId;

use super::*;

/// A policy on a test clock: `at(s)` is `s` seconds after the start.
struct Fixture {
    policy: ModePolicy,
    t0: Instant,
}

const P2P: Capability = Capability::P2p;

fn enabled() -> HybridSettings {
    HybridSettings {
        enabled: true,
        ..HybridSettings::default()
    }
}

impl Fixture {
    fn new(settings: HybridSettings) -> Fixture {
        settings.validate().unwrap();
        Fixture {
            policy: ModePolicy::new(settings),
            t0: Instant::now(),
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn join(&mut self, channel: &str, member: u64, cap: Capability, secs: f64) -> Assignment {
        let now = self.at(secs);
        self.policy.handle_join(channel, PeerId(member), cap, now)
    }

    /// Members `ids` join `channel` at `secs`, each P2P-capable.
    fn join_all(&mut self, channel: &str, ids: impl IntoIterator<Item = u64>, secs: f64) {
        for id in ids {
            self.join(channel, id, P2P, secs);
        }
    }

    fn leave(&mut self, member: u64, secs: f64) {
        let now = self.at(secs);
        self.policy.handle_leave(PeerId(member), now);
    }

    fn switched(
        &mut self,
        member: u64,
        mode: Mode,
        epoch: u64,
        secs: f64,
    ) -> Result<(), ReportError> {
        let now = self.at(secs);
        self.policy
            .handle_switched(PeerId(member), mode, epoch, now)
    }

    /// Every member in `ids` reports `switched` for the channel's current
    /// mode and epoch.
    fn all_switched(&mut self, channel: &str, ids: impl IntoIterator<Item = u64>, secs: f64) {
        let ch = self.policy.channel(channel).unwrap();
        let (mode, epoch) = (ch.mode(), ch.epoch());
        for id in ids {
            self.switched(id, mode, epoch, secs).unwrap();
        }
    }

    fn failed(&mut self, member: u64, peer: u64, epoch: u64, secs: f64) -> Result<(), ReportError> {
        let now = self.at(secs);
        self.policy.handle_p2p_failed(
            PeerId(member),
            PeerId(peer),
            MeshFailure::ConnectTimeout,
            epoch,
            now,
        )
    }

    fn timeout(&mut self, secs: f64) {
        let now = self.at(secs);
        self.policy.handle_timeout(now);
    }

    fn settings(&mut self, settings: HybridSettings, secs: f64) {
        settings.validate().unwrap();
        let now = self.at(secs);
        self.policy.handle_settings(settings, now);
    }

    fn decisions(&mut self) -> Vec<Decision> {
        std::iter::from_fn(|| self.policy.poll_decision()).collect()
    }

    /// The one decision since the last call, a completed switch: its mode,
    /// epoch and stragglers.
    fn completed(&mut self) -> (Mode, u64, Vec<u64>) {
        match &self.decisions()[..] {
            [Decision::SwitchComplete {
                mode,
                epoch,
                stragglers,
                ..
            }] => (*mode, *epoch, stragglers.iter().map(|p| p.0).collect()),
            other => panic!("not one completed switch: {other:?}"),
        }
    }

    /// `channel` stays on the SFU (no timer runs, nothing happens by
    /// `secs`) until `member` leaves at `secs`; then it returns to P2P 10 s
    /// later, with epoch `epoch`.
    fn returns_only_once_gone(&mut self, channel: &str, member: u64, secs: f64, epoch: u64) {
        assert_eq!(self.policy.poll_timeout(), None);
        self.timeout(secs);
        assert_eq!(self.decisions(), []);
        self.leave(member, secs);
        self.timeout(secs + 9.999);
        assert_eq!(self.decisions(), []);
        self.timeout(secs + 10.0);
        assert_eq!(
            self.decisions(),
            [change(channel, Mode::P2p, Reason::Small, epoch)]
        );
    }

    fn state(&self, channel: &str) -> ModeState {
        self.policy.channel(channel).unwrap().state()
    }

    fn epoch(&self, channel: &str) -> u64 {
        self.policy.channel(channel).unwrap().epoch()
    }

    fn pending(&self, channel: &str) -> Vec<u64> {
        self.policy
            .channel(channel)
            .unwrap()
            .pending()
            .map(|p| p.0)
            .collect()
    }

    /// A channel of members `base + 1..=base + 8` that switched to the SFU
    /// at 0 s and completed the switch at 1 s (epoch 2).
    fn eight_on_sfu(&mut self, channel: &str, base: u64) {
        self.join_all(channel, base + 1..=base + 7, 0.0);
        assert_eq!(self.join(channel, base + 8, P2P, 0.0).mode, Mode::Sfu);
        self.all_switched(channel, base + 1..=base + 7, 1.0);
        assert_eq!(self.state(channel), ModeState::Steady(Mode::Sfu));
        self.decisions();
    }
}

fn assigned(mode: Mode, epoch: u64) -> Assignment {
    Assignment { mode, epoch }
}

fn change(channel: &str, to: Mode, reason: Reason, epoch: u64) -> Decision {
    Decision::ModeChange {
        channel: channel.into(),
        to,
        reason,
        epoch,
    }
}

#[test]
fn fnv1a64_matches_the_published_vectors() {
    // From the FNV reference test suite (Fowler, Noll, Vo).
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn rollout_buckets_are_fixed_forever() {
    // Computed once by an independent implementation; a change here moves
    // channels in or out of a running rollout on upgrade.
    for (name, bucket) in [
        ("", 6203),
        ("a", 3736),
        ("foobar", 4498),
        ("lobby", 5085),
        ("channel-1", 862),
        ("study/room-42", 9982),
        ("é", 8990),
    ] {
        assert_eq!(rollout_bucket(name), bucket, "{name:?}");
    }
}

#[test]
fn rollout_shares_are_even_and_only_grow() {
    let names: Vec<String> = (0..100_000).map(|i| format!("room-{i}")).collect();
    let share = |r: Rollout| names.iter().filter(|n| r.includes(n)).count() as f64 / 1000.0;
    for (percent, lo, hi) in [(0.1, 0.07, 0.13), (5.0, 4.8, 5.2), (50.0, 49.5, 50.5)] {
        let r = Rollout::from_percent(percent).unwrap();
        let s = share(r);
        assert!((lo..=hi).contains(&s), "{percent}%: {s}%");
    }
    assert_eq!(share(Rollout::NONE), 0.0);
    assert_eq!(share(Rollout::ALL), 100.0);
    // Raising the share only adds channels: none leaves P2P on the way
    // from 0.1% to 100%.
    let steps = [0.1, 5.0, 50.0, 100.0].map(|p| Rollout::from_percent(p).unwrap());
    for w in steps.windows(2) {
        assert!(names.iter().all(|n| !w[0].includes(n) || w[1].includes(n)));
    }
}

#[test]
fn rollout_percent_is_checked_and_rounded_to_basis_points() {
    assert_eq!(Rollout::from_percent(0.0), Some(Rollout::NONE));
    assert_eq!(Rollout::from_percent(100.0), Some(Rollout::ALL));
    assert_eq!(Rollout::from_percent(0.1).unwrap().percent(), 0.1);
    assert_eq!(Rollout::from_percent(12.344).unwrap().percent(), 12.34);
    for bad in [-0.01, 100.01, f64::NAN, f64::INFINITY] {
        assert_eq!(Rollout::from_percent(bad), None, "{bad}");
    }
}

#[test]
fn settings_that_cannot_work_are_refused() {
    HybridSettings::default().validate().unwrap();
    let with = |f: fn(&mut HybridSettings)| {
        let mut s = HybridSettings::default();
        f(&mut s);
        s.validate()
    };
    assert_eq!(with(|s| s.p2p_max = 0), Err(SettingsError::P2pMax(0)));
    assert_eq!(with(|s| s.p2p_max = 17), Err(SettingsError::P2pMax(17)));
    assert!(with(|s| s.p2p_max = 16).is_ok());
    assert_eq!(
        with(|s| s.p2p_return_at = 8),
        Err(SettingsError::ReturnAt {
            return_at: 8,
            max: 7
        })
    );
    assert!(with(|s| s.p2p_return_at = 7).is_ok());
    assert!(matches!(
        with(|s| s.p2p_return_after = Duration::from_secs(7200)),
        Err(SettingsError::ReturnAfter(_))
    ));
    assert!(matches!(
        with(|s| s.switch_timeout = Duration::ZERO),
        Err(SettingsError::SwitchTimeout(_))
    ));
}

#[test]
fn seven_members_talk_p2p_and_the_eighth_moves_the_channel_to_the_sfu() {
    let mut f = Fixture::new(enabled());
    for id in 1..=7 {
        let a = f.join("c", id, P2P, 0.0);
        assert_eq!(a, assigned(Mode::P2p, 1), "member {id}");
    }
    assert_eq!(f.state("c"), ModeState::Steady(Mode::P2p));
    assert_eq!(f.decisions(), []);
    assert_eq!(f.policy.poll_timeout(), None);

    let a = f.join("c", 8, P2P, 2.0);
    assert_eq!(a, assigned(Mode::Sfu, 2));
    assert_eq!(f.decisions(), [change("c", Mode::Sfu, Reason::Size, 2)]);
    assert_eq!(f.state("c"), ModeState::Switching(Mode::Sfu));
    // The eighth joined the SFU directly: it has nothing to switch.
    assert_eq!(f.pending("c"), (1..=7).collect::<Vec<_>>());
    assert_eq!(f.policy.poll_timeout(), Some(f.at(12.0)));

    f.all_switched("c", 1..=6, 2.5);
    assert_eq!(f.decisions(), []);
    f.switched(7, Mode::Sfu, 2, 2.75).unwrap();
    assert_eq!(
        f.decisions(),
        [Decision::SwitchComplete {
            channel: "c".into(),
            mode: Mode::Sfu,
            epoch: 2,
            duration: Duration::from_millis(750),
            stragglers: vec![],
        }]
    );
    assert_eq!(f.state("c"), ModeState::Steady(Mode::Sfu));
    let stats = f.policy.stats();
    assert_eq!(stats.switches[&(Mode::Sfu, "size")], 1);
    assert_eq!(stats.completed[&(Mode::Sfu, false)], 1);
    assert!(stats.fallbacks.is_empty());
}

#[test]
fn the_limit_follows_p2p_max() {
    let mut f = Fixture::new(HybridSettings {
        p2p_max: 2,
        p2p_return_at: 2,
        ..enabled()
    });
    assert_eq!(f.join("c", 1, P2P, 0.0).mode, Mode::P2p);
    assert_eq!(f.join("c", 2, P2P, 0.0).mode, Mode::P2p);
    assert_eq!(f.join("c", 3, P2P, 0.0).mode, Mode::Sfu);
}

#[test]
fn back_to_p2p_only_after_ten_seconds_at_five_or_fewer() {
    let mut f = Fixture::new(enabled());
    f.eight_on_sfu("c", 0);
    // 8 → 6: still more than p2p_return_at; no timer runs.
    f.leave(8, 10.0);
    f.leave(7, 10.0);
    assert_eq!(f.policy.poll_timeout(), None);
    f.timeout(100.0);
    assert_eq!(f.decisions(), []);
    // 6 → 5 at 100 s: the channel may return at 110 s, not before.
    f.leave(6, 100.0);
    assert_eq!(f.policy.poll_timeout(), Some(f.at(110.0)));
    f.timeout(109.999);
    assert_eq!(f.decisions(), []);
    assert_eq!(f.state("c"), ModeState::Steady(Mode::Sfu));
    f.timeout(110.0);
    assert_eq!(f.decisions(), [change("c", Mode::P2p, Reason::Small, 3)]);
    assert_eq!(f.pending("c"), [1, 2, 3, 4, 5]);
    // A member joining now builds mesh links from the start.
    assert_eq!(f.join("c", 9, P2P, 110.5), assigned(Mode::P2p, 3));
    f.all_switched("c", 1..=5, 111.0);
    assert_eq!(f.completed(), (Mode::P2p, 3, vec![]));
    assert_eq!(f.state("c"), ModeState::Steady(Mode::P2p));
    assert_eq!(f.policy.stats().switches[&(Mode::P2p, "small")], 1);
}

#[test]
fn a_join_above_the_return_size_restarts_the_hysteresis() {
    let mut f = Fixture::new(enabled());
    f.eight_on_sfu("c", 0);
    for id in 6..=8 {
        f.leave(id, 10.0);
    }
    // Five for 6 s, then a sixth: the timer stops...
    f.join("c", 9, P2P, 16.0);
    assert_eq!(f.policy.poll_timeout(), None);
    f.timeout(20.0);
    assert_eq!(f.decisions(), []);
    // ...and starts again from zero when it leaves.
    f.leave(9, 21.0);
    f.timeout(30.9);
    assert_eq!(f.decisions(), []);
    f.timeout(31.0);
    assert_eq!(f.decisions(), [change("c", Mode::P2p, Reason::Small, 3)]);
}

#[test]
fn a_join_that_stays_at_the_return_size_keeps_the_timer() {
    let mut f = Fixture::new(enabled());
    f.eight_on_sfu("c", 0);
    for id in 5..=8 {
        f.leave(id, 10.0);
    }
    // 4 → 5 at 15 s: the condition held throughout.
    f.join("c", 9, P2P, 15.0);
    f.timeout(20.0);
    assert_eq!(f.decisions(), [change("c", Mode::P2p, Reason::Small, 3)]);
    // The member that joined on the SFU switches like everyone.
    assert_eq!(f.pending("c"), [1, 2, 3, 4, 9]);
}

#[test]
fn the_boundary_does_not_flap() {
    let mut f = Fixture::new(enabled());
    f.eight_on_sfu("c", 0);
    // The eighth comes and goes every few seconds: 7 members never return.
    for i in 0..10u32 {
        let t = 10.0 + f64::from(i) * 4.0;
        f.leave(8 + u64::from(i), t);
        f.join("c", 9 + u64::from(i), P2P, t + 2.0);
        f.timeout(t + 3.0);
    }
    assert_eq!(f.decisions(), []);
    assert_eq!(f.state("c"), ModeState::Steady(Mode::Sfu));
}

#[test]
fn a_member_only_the_sfu_can_carry_moves_the_channel_and_keeps_it_there() {
    for (why, name) in [
        (SfuOnly::Http, "whip_whep"),
        (SfuOnly::Client, "client"),
        (SfuOnly::Token, "token"),
    ] {
        let mut f = Fixture::new(enabled());
        f.join_all("c", 1..=3, 0.0);
        let a = f.join("c", 4, Capability::SfuOnly(why), 1.0);
        assert_eq!(a, assigned(Mode::Sfu, 2));
        assert_eq!(
            f.decisions(),
            [change("c", Mode::Sfu, Reason::SfuOnlyMember(why), 2)]
        );
        assert_eq!(Reason::SfuOnlyMember(why).name(), name);
        assert_eq!(f.pending("c"), [1, 2, 3]);
        f.all_switched("c", 1..=3, 2.0);
        f.decisions();
        // Four members, but one is SFU-only: no way back while it stays.
        f.returns_only_once_gone("c", 4, 60.0, 3);
    }
}

#[test]
fn a_channel_whose_first_member_is_sfu_only_starts_on_the_sfu() {
    let mut f = Fixture::new(enabled());
    let a = f.join("c", 1, Capability::SfuOnly(SfuOnly::Http), 0.0);
    assert_eq!(a, assigned(Mode::Sfu, 1));
    assert_eq!(f.join("c", 2, P2P, 0.0).mode, Mode::Sfu);
    assert_eq!(f.decisions(), []);
    assert_eq!(f.state("c"), ModeState::Steady(Mode::Sfu));
}

#[test]
fn turning_p2p_off_moves_p2p_channels_to_the_sfu_and_on_lets_them_return() {
    let mut f = Fixture::new(enabled());
    f.join_all("steady", 1..=3, 0.0);
    f.eight_on_sfu("sfu", 100);
    // "down" is switching to P2P when the switch is thrown.
    for id in 20..=23 {
        f.join("down", id, P2P, 0.0);
    }
    f.join("down", 24, Capability::SfuOnly(SfuOnly::Http), 0.0);
    f.all_switched("down", 20..=23, 0.5);
    f.leave(24, 1.0);
    f.timeout(11.0);
    assert_eq!(f.state("down"), ModeState::Switching(Mode::P2p));
    f.decisions();

    f.settings(HybridSettings::default(), 12.0);
    let mut d = f.decisions();
    d.sort_by_key(|d| format!("{d:?}"));
    assert_eq!(
        d,
        [
            change("down", Mode::Sfu, Reason::Disabled, 4),
            change("steady", Mode::Sfu, Reason::Disabled, 2),
        ]
    );
    assert_eq!(f.state("sfu"), ModeState::Steady(Mode::Sfu));
    // A new channel starts on the SFU; none returns while it is off.
    assert_eq!(f.join("new", 30, P2P, 13.0).mode, Mode::Sfu);
    f.all_switched("steady", 1..=3, 13.0);
    f.all_switched("down", 20..=23, 13.0);
    f.decisions();
    f.timeout(100.0);
    assert_eq!(f.decisions(), []);
    assert_eq!(f.policy.poll_timeout(), None);

    // On again at 100 s: the small channels return at 110 s, the one with
    // 8 members stays.
    f.settings(enabled(), 100.0);
    assert_eq!(f.decisions(), []);
    f.timeout(110.0);
    let mut d = f.decisions();
    d.sort_by_key(|d| format!("{d:?}"));
    assert_eq!(
        d,
        [
            change("down", Mode::P2p, Reason::Small, 5),
            change("new", Mode::P2p, Reason::Small, 2),
            change("steady", Mode::P2p, Reason::Small, 3),
        ]
    );
    assert_eq!(f.state("sfu"), ModeState::Steady(Mode::Sfu));
    assert_eq!(f.policy.stats().switches[&(Mode::Sfu, "disabled")], 2);
}

#[test]
fn the_rollout_decides_by_a_stable_hash_of_the_channel_name() {
    // Two names on either side of the 5% line.
    let inside = (0..)
        .map(|i| format!("in-{i}"))
        .find(|n| rollout_bucket(n) < 500)
        .unwrap();
    let outside = (0..)
        .map(|i| format!("out-{i}"))
        .find(|n| rollout_bucket(n) >= 500)
        .unwrap();
    let none = HybridSettings {
        rollout: Rollout::NONE,
        ..enabled()
    };
    let mut f = Fixture::new(none);
    assert_eq!(f.join(&inside, 1, P2P, 0.0).mode, Mode::Sfu);
    assert_eq!(f.join(&outside, 2, P2P, 0.0).mode, Mode::Sfu);
    f.leave(1, 0.0);
    f.leave(2, 0.0);

    let mut f = Fixture::new(enabled());
    assert_eq!(f.join(&inside, 1, P2P, 0.0).mode, Mode::P2p);
    assert_eq!(f.join(&outside, 2, P2P, 0.0).mode, Mode::P2p);
    // Rolled back from 100% to 5% at runtime: only the channel outside
    // moves.
    let five = HybridSettings {
        rollout: Rollout::from_percent(5.0).unwrap(),
        ..enabled()
    };
    f.settings(five, 1.0);
    assert_eq!(
        f.decisions(),
        [change(&outside, Mode::Sfu, Reason::NotInRollout, 2)]
    );
    assert_eq!(f.state(&inside), ModeState::Steady(Mode::P2p));
}

#[test]
fn p2p_can_be_disabled_for_one_channel() {
    let mut f = Fixture::new(enabled());
    f.join_all("a", 1..=2, 0.0);
    f.join_all("b", 3..=4, 0.0);
    let mut s = enabled();
    s.disabled_channels.insert("a".into());
    f.settings(s.clone(), 1.0);
    assert_eq!(
        f.decisions(),
        [change("a", Mode::Sfu, Reason::ChannelDisabled, 2)]
    );
    assert_eq!(f.state("b"), ModeState::Steady(Mode::P2p));
    s.disabled_channels.clear();
    f.settings(s, 2.0);
    f.all_switched("a", 1..=2, 2.0);
    f.decisions();
    f.timeout(12.0);
    assert_eq!(f.decisions(), [change("a", Mode::P2p, Reason::Small, 3)]);
}

#[test]
fn lowering_p2p_max_below_a_channels_size_moves_it() {
    let mut f = Fixture::new(enabled());
    f.join_all("c", 1..=6, 0.0);
    f.settings(
        HybridSettings {
            p2p_max: 4,
            p2p_return_at: 3,
            ..enabled()
        },
        1.0,
    );
    assert_eq!(f.decisions(), [change("c", Mode::Sfu, Reason::Size, 2)]);
}

#[test]
fn members_joining_during_a_switch_get_the_target_mode() {
    let mut f = Fixture::new(enabled());
    // Up: the ninth joins while 1..=7 still switch.
    f.join_all("c", 1..=8, 0.0);
    f.decisions();
    assert_eq!(f.join("c", 9, P2P, 0.5), assigned(Mode::Sfu, 2));
    assert_eq!(f.pending("c"), (1..=7).collect::<Vec<_>>());
    f.all_switched("c", 1..=7, 1.0);
    assert_eq!(f.completed(), (Mode::Sfu, 2, vec![]));

    // Down: 1..=4 switch to P2P; a fifth joins midway and builds mesh links
    // from the start; the switch does not wait for it.
    for id in 5..=9 {
        f.leave(id, 2.0);
    }
    f.timeout(12.0);
    assert_eq!(f.decisions(), [change("c", Mode::P2p, Reason::Small, 3)]);
    assert_eq!(f.join("c", 10, P2P, 12.5), assigned(Mode::P2p, 3));
    f.all_switched("c", 1..=4, 13.0);
    assert_eq!(f.completed(), (Mode::P2p, 3, vec![]));
}

#[test]
fn a_failed_mesh_link_moves_the_channel_to_the_sfu_while_the_pair_stays() {
    let mut f = Fixture::new(enabled());
    f.join_all("c", 1..=3, 0.0);
    f.failed(1, 2, 1, 4.0).unwrap();
    assert_eq!(
        f.decisions(),
        [change(
            "c",
            Mode::Sfu,
            Reason::P2pFailed(MeshFailure::ConnectTimeout),
            2
        )]
    );
    assert_eq!(f.policy.stats().fallbacks["timeout"], 1);
    assert_eq!(f.policy.stats().switches[&(Mode::Sfu, "p2p_failed")], 1);
    f.all_switched("c", 1..=3, 5.0);
    f.decisions();
    // Three members, then four, but 1 and 2 cannot reach each other: no
    // return while both stay.
    f.join("c", 4, P2P, 6.0);
    f.returns_only_once_gone("c", 2, 60.0, 3);
}

#[test]
fn a_failed_mesh_link_during_a_switch_to_p2p_falls_back() {
    let mut f = Fixture::new(enabled());
    f.eight_on_sfu("c", 0);
    for id in 4..=8 {
        f.leave(id, 2.0);
    }
    f.timeout(12.0);
    f.decisions();
    f.switched(1, Mode::P2p, 3, 12.5).unwrap();
    f.failed(3, 2, 3, 13.0).unwrap();
    assert_eq!(
        f.decisions(),
        [change(
            "c",
            Mode::Sfu,
            Reason::P2pFailed(MeshFailure::ConnectTimeout),
            4
        )]
    );
    // Everyone switches back, the one that had switched to the mesh too.
    assert_eq!(f.pending("c"), [1, 2, 3]);
}

#[test]
fn failure_reports_are_checked() {
    let mut f = Fixture::new(enabled());
    f.join_all("c", 1..=3, 0.0);
    f.join("d", 9, P2P, 0.0);
    let stale = ReportError::StaleEpoch { got: 7, current: 1 };
    assert_eq!(f.failed(1, 2, 7, 1.0), Err(stale));
    assert_eq!(f.failed(1, 1, 1, 1.0), Err(ReportError::UnknownPeer));
    assert_eq!(f.failed(1, 9, 1, 1.0), Err(ReportError::UnknownPeer));
    assert_eq!(f.failed(1, 42, 1, 1.0), Err(ReportError::UnknownPeer));
    assert_eq!(f.failed(42, 1, 1, 1.0), Err(ReportError::NotAMember));
    assert_eq!(f.decisions(), []);
    assert_eq!(f.policy.stats().reports_ignored, 5);
    // On the SFU a mesh failure means nothing.
    f.eight_on_sfu("e", 10);
    assert_eq!(f.failed(11, 12, 2, 2.0), Err(ReportError::WrongMode));
    assert_eq!(f.decisions(), []);
    assert_eq!(MeshFailure::parse("ice_failed"), MeshFailure::IceFailed);
    assert_eq!(MeshFailure::parse("a new reason"), MeshFailure::Other);
}

#[test]
fn a_switch_to_p2p_that_times_out_falls_back_and_blocks_the_stragglers() {
    let mut f = Fixture::new(enabled());
    f.eight_on_sfu("c", 0);
    for id in 4..=8 {
        f.leave(id, 2.0);
    }
    f.timeout(12.0);
    f.decisions();
    f.all_switched("c", [1, 2], 13.0);
    assert_eq!(f.policy.poll_timeout(), Some(f.at(22.0)));
    f.timeout(22.0);
    assert_eq!(
        f.decisions(),
        [change("c", Mode::Sfu, Reason::SwitchTimeout, 4)]
    );
    assert_eq!(f.policy.stats().fallbacks["switch_timeout"], 1);
    f.all_switched("c", 1..=3, 23.0);
    f.decisions();
    // Member 3 never made its mesh links: no return while it stays.
    f.returns_only_once_gone("c", 3, 100.0, 5);
}

#[test]
fn a_switch_to_the_sfu_completes_at_the_timeout_with_its_stragglers() {
    let mut f = Fixture::new(enabled());
    f.join_all("c", 1..=8, 0.0);
    f.decisions();
    f.all_switched("c", 1..=5, 1.0);
    f.timeout(10.0);
    assert_eq!(
        f.decisions(),
        [Decision::SwitchComplete {
            channel: "c".into(),
            mode: Mode::Sfu,
            epoch: 2,
            duration: Duration::from_secs(10),
            stragglers: vec![PeerId(6), PeerId(7)],
        }]
    );
    assert_eq!(f.policy.stats().completed[&(Mode::Sfu, true)], 1);
}

#[test]
fn a_switched_report_from_an_old_epoch_is_ignored() {
    let mut f = Fixture::new(enabled());
    f.eight_on_sfu("c", 0);
    for id in 4..=8 {
        f.leave(id, 2.0);
    }
    f.timeout(12.0);
    f.failed(1, 2, 3, 12.5).unwrap();
    assert_eq!(f.epoch("c"), 4);
    f.decisions();
    // Member 3's switch to P2P of epoch 3 arrives after the fallback (epoch
    // 4, to the SFU): it must not count as switched for epoch 4.
    assert_eq!(
        f.switched(3, Mode::P2p, 3, 13.0),
        Err(ReportError::StaleEpoch { got: 3, current: 4 })
    );
    assert_eq!(
        f.switched(3, Mode::Sfu, 3, 13.0),
        Err(ReportError::StaleEpoch { got: 3, current: 4 })
    );
    assert_eq!(
        f.switched(3, Mode::P2p, 4, 13.0),
        Err(ReportError::WrongMode)
    );
    assert_eq!(f.pending("c"), [1, 2, 3]);
    f.all_switched("c", [1, 2], 13.5);
    assert_eq!(f.decisions(), []);
    f.switched(3, Mode::Sfu, 4, 14.0).unwrap();
    assert_eq!(f.decisions().len(), 1);
    assert_eq!(f.policy.stats().reports_ignored, 3);
    // A report after the switch completed is harmless.
    f.switched(3, Mode::Sfu, 4, 15.0).unwrap();
    assert_eq!(f.decisions(), []);
}

#[test]
fn a_leave_can_complete_a_switch() {
    let mut f = Fixture::new(enabled());
    f.join_all("c", 1..=8, 0.0);
    f.decisions();
    f.all_switched("c", 1..=6, 1.0);
    assert_eq!(f.decisions(), []);
    f.leave(7, 2.0);
    assert_eq!(f.completed(), (Mode::Sfu, 2, vec![]));
}

#[test]
fn the_last_member_out_forgets_the_channel_and_its_timers() {
    let mut f = Fixture::new(enabled());
    f.join_all("c", 1..=3, 0.0);
    f.failed(1, 2, 1, 1.0).unwrap();
    assert!(f.policy.poll_timeout().is_some());
    for id in 1..=3 {
        f.leave(id, 2.0);
    }
    assert!(f.policy.channel("c").is_none());
    assert_eq!(f.policy.poll_timeout(), None);
    // The failed pair is forgotten with it.
    f.join_all("c", 1..=2, 3.0);
    assert_eq!(f.state("c"), ModeState::Steady(Mode::P2p));
}

#[test]
fn timeouts_are_kept_per_channel() {
    let mut f = Fixture::new(enabled());
    f.join_all("a", 1..=8, 0.0);
    f.join_all("b", 11..=18, 3.0);
    f.decisions();
    assert_eq!(f.policy.poll_timeout(), Some(f.at(10.0)));
    f.timeout(10.0);
    assert_eq!(f.decisions().len(), 1);
    assert_eq!(f.state("a"), ModeState::Steady(Mode::Sfu));
    assert_eq!(f.state("b"), ModeState::Switching(Mode::Sfu));
    assert_eq!(f.policy.poll_timeout(), Some(f.at(13.0)));
}

#[test]
fn the_census_counts_channels_and_members_by_mode() {
    let mut f = Fixture::new(enabled());
    f.join_all("p", 1..=3, 0.0);
    f.eight_on_sfu("s", 10);
    f.join_all("u", 21..=28, 0.0);
    assert_eq!(
        f.policy.census(),
        ModeCensus {
            p2p_channels: 1,
            sfu_channels: 1,
            switching_up: 1,
            switching_down: 0,
            p2p_members: 3,
            sfu_members: 8,
            switching_members: 8,
        }
    );
}

#[test]
fn a_second_join_of_the_same_member_changes_nothing() {
    let mut f = Fixture::new(enabled());
    f.join_all("c", 1..=7, 0.0);
    assert_eq!(f.join("c", 7, P2P, 1.0), assigned(Mode::P2p, 1));
    assert_eq!(f.policy.channel("c").unwrap().len(), 7);
}

#[test]
fn preview_join_says_what_a_join_would_get_and_changes_nothing() {
    let mut f = Fixture::new(enabled());
    let http = Capability::SfuOnly(SfuOnly::Http);
    let t = f.at(0.0);
    assert_eq!(f.policy.preview_join("c", P2P, t), Mode::P2p);
    assert_eq!(f.policy.preview_join("c", http, t), Mode::Sfu);
    assert!(f.policy.channel("c").is_none());
    f.join_all("c", 1..=7, 0.0);
    let t = f.at(1.0);
    assert_eq!(f.policy.preview_join("c", P2P, t), Mode::Sfu);
    assert_eq!(f.state("c"), ModeState::Steady(Mode::P2p));
    assert_eq!(f.policy.channel("c").unwrap().len(), 7);
    f.leave(7, 1.0);
    assert_eq!(f.policy.preview_join("c", P2P, t), Mode::P2p);
    assert_eq!(f.policy.preview_join("c", http, t), Mode::Sfu);
    assert_eq!(f.decisions(), []);

    // Off, or outside the rollout: a new channel would start on the SFU.
    let mut f = Fixture::new(HybridSettings::default());
    assert_eq!(f.policy.preview_join("c", P2P, f.at(0.0)), Mode::Sfu);
}

#[test]
fn a_join_after_a_due_return_is_judged_after_it_with_or_without_a_preview() {
    for preview in [true, false] {
        let mut f = Fixture::new(enabled());
        f.eight_on_sfu("c", 0);
        for id in 6..=8 {
            f.leave(id, 2.0);
        }
        // The return was due at 12 s; nothing ran since. A sixth member at
        // 12.5 s joins a channel that has just begun its switch to P2P.
        if preview {
            assert_eq!(f.policy.preview_join("c", P2P, f.at(12.5)), Mode::P2p);
        }
        assert_eq!(f.join("c", 9, P2P, 12.5), assigned(Mode::P2p, 3));
        assert_eq!(f.decisions(), [change("c", Mode::P2p, Reason::Small, 3)]);
        assert_eq!(f.pending("c"), [1, 2, 3, 4, 5]);
    }
}
