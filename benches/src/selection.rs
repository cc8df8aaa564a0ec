//! Speaker selection per packet: the engine's `SpeakerSelector` and dominant
//! speaker detector (through `media_core::bench_api`) fed the levels of a
//! channel with N candidate speakers, as in a meeting: every member sends a
//! packet every 20 ms, most are silent or background noise, one talks at a
//! time with pauses, another cuts in, someone coughs, and the talker changes
//! every 2 s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use media_core::bench_api::{Dominant, Selector};
use media_core::{EngineConfig, SourceId};

use crate::FRAME;

/// Frames of one talker's turn (2 s).
pub const TURN: usize = 100;

/// Frames before the pattern repeats: 5 turns, 10 s.
pub const CYCLE: usize = 5 * TURN;

/// Frames between two dominant-speaker decisions (300 ms, the engine's
/// default `dominant_interval`).
pub const TICK: usize = 15;

/// One packet's level as `Engine::route` sees it.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    /// The member.
    pub source: SourceId,
    /// RFC 6464 level (0 loudest, 127 silence).
    pub level: u8,
    /// `level <= speech_level`, as `SourceFrame::is_speech` without VAD.
    pub speech: bool,
}

/// A talker's levels (-20 to -35 dBov), one per frame.
const TALK: [u8; 8] = [22, 28, 20, 33, 25, 30, 24, 35];

/// Who talks in turn `turn` of a channel of `n`: the main talker, the one who
/// cuts in, the one who coughs. Consecutive turns have different talkers.
pub fn talkers(turn: usize, n: usize) -> (usize, usize, usize) {
    ((turn * 7 + 1) % n, (turn * 7 + 2) % n, (turn * 13 + 5) % n)
}

/// The level source `s` of `n` sends in frame `f` of the cycle.
fn level(f: usize, s: usize, n: usize) -> u8 {
    let (main, other, cough) = talkers(f / TURN, n);
    let t = f % TURN;
    if s == main {
        // Talks, with a 100 ms pause every 500 ms (between phrases), in
        // which its microphone picks up the room at -70 dBov.
        return if f % 25 >= 20 { 70 } else { TALK[f % 8] };
    }
    if s == other && (40..70).contains(&t) {
        // Cuts in for 600 ms, a little quieter.
        return TALK[(f + 3) % 8] + 8;
    }
    if s == cough && (80..85).contains(&t) {
        // 100 ms at nearly full scale.
        return 3 + (f % 3) as u8;
    }
    // Everybody else: a quarter fully silent (muted microphone, no noise),
    // the others background noise between -85 and -127 dBov.
    if s % 4 == 3 {
        return 127;
    }
    let base = 85 + (s * 37 % 40) as u8;
    let wobble = ((f * 31 + s * 17) % 5) as u8;
    (base + wobble).min(127)
}

/// One cycle of a channel with `n` members: `CYCLE` frames of `n` packets,
/// each member once per frame, in a shuffled (seeded) order.
pub fn pattern(n: usize, speech_level: u8) -> Vec<Packet> {
    assert!(n > 0);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut order: Vec<usize> = (0..n).collect();
    let mut packets = Vec::with_capacity(CYCLE * n);
    for f in 0..CYCLE {
        for i in (1..n).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        for &s in &order {
            let level = level(f, s, n);
            packets.push(Packet {
                source: SourceId(s as u32 + 1),
                level,
                speech: level <= speech_level,
            });
        }
    }
    packets
}

/// What [`SelectionRig::feed`] counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Packets fed.
    pub packets: u64,
    /// `on_packet` (or `pin`) calls that changed the selection.
    pub switches: u64,
    /// Decisions that changed the dominant speaker.
    pub dominant_changes: u64,
}

/// Which parts of the selection a [`SelectionRig::feed`] runs per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `SpeakerSelector::on_packet` only.
    OnPacket,
    /// `DominantSpeakerDetector::record_level` only.
    RecordLevel,
    /// Both, and every 300 ms (of packets) a dominant-speaker decision that
    /// pins the winner in the selector when it changed: the selection work
    /// of `Engine::route` and `Engine::channel_tick`, per packet.
    All,
}

/// The selector and the detector of one channel of `n` members, and the
/// cycle of their packets.
#[derive(Debug)]
pub struct SelectionRig {
    n: usize,
    slots: usize,
    selector: Selector,
    dominant: Dominant,
    packets: Vec<Packet>,
    /// Next packet of `packets`.
    cursor: usize,
    /// Packets left in the current frame.
    left_in_frame: usize,
    /// Frames left until the next decision.
    left_to_tick: usize,
    now: Instant,
    /// What was fed since the setup check (timed or not).
    pub counts: Counts,
}

impl SelectionRig {
    /// A channel of `n` members with the engine's default configuration,
    /// checked over two cycles: the selector selects each turn's talker
    /// during its turn, and the detector makes it dominant.
    ///
    /// # Panics
    /// When the selection does not follow the talkers.
    pub fn new(n: usize) -> Self {
        let config = EngineConfig::new(testkit::SEED);
        let mut rig = SelectionRig {
            n,
            slots: config.slots_per_listener,
            selector: Selector::new(&config),
            dominant: Dominant::new(),
            packets: pattern(n, config.speech_level),
            cursor: 0,
            left_in_frame: n,
            left_to_tick: TICK,
            // Any start will do: time only moves forward from here.
            now: Instant::now(),
            counts: Counts::default(),
        };
        assert_eq!(Dominant::DECISION_INTERVAL, FRAME * TICK as u32);
        for cycle in 0..2 {
            for turn in 0..CYCLE / TURN {
                // Feed the turn up to its last frame, then look.
                rig.feed(((TURN - 1) * n) as u64, Part::All);
                let (main, _, _) = talkers(turn, n);
                let main = SourceId(main as u32 + 1);
                assert!(
                    rig.selector.selected().contains(&main),
                    "cycle {cycle} turn {turn}: talker {main:?} not selected: {:?}",
                    rig.selector.selected()
                );
                assert_eq!(
                    rig.dominant.dominant(),
                    Some(main),
                    "cycle {cycle} turn {turn}: talker not dominant"
                );
                rig.feed(n as u64, Part::All);
            }
        }
        // One new dominant speaker per turn; with more members than slots,
        // at least one selection change per turn too.
        assert!(rig.counts.dominant_changes >= 2 * (CYCLE / TURN) as u64);
        if n > config.slots_per_listener {
            assert!(rig.counts.switches >= 2 * (CYCLE / TURN) as u64);
        }
        rig.counts = Counts::default();
        rig
    }

    /// After two cycles or more fed with `Part::OnPacket` or `Part::All`:
    /// asserts that the selection changed (with more members than slots).
    pub fn assert_selection_moved(&self) {
        if self.counts.packets >= 2 * self.cycle_packets() {
            assert_eq!(self.counts.switches > 0, self.n > self.slots);
        }
    }

    /// After two cycles or more fed with `Part::All` or through
    /// [`Self::decide`]: asserts that the dominant speaker changed.
    pub fn assert_dominant_moved(&self) {
        if self.counts.packets >= 2 * self.cycle_packets() {
            assert!(self.counts.dominant_changes > 0);
        }
    }

    /// Members of the channel.
    pub fn members(&self) -> usize {
        self.n
    }

    /// Packets in one cycle of the pattern.
    pub fn cycle_packets(&self) -> u64 {
        self.packets.len() as u64
    }

    /// Feeds the next `packets` packets of the pattern (all members' packets
    /// of a frame share its time; frames are 20 ms apart) to `part`.
    pub fn feed(&mut self, packets: u64, part: Part) {
        let mut switches = 0u64;
        let mut dominant_changes = 0u64;
        for _ in 0..packets {
            let p = self.packets[self.cursor];
            match part {
                Part::OnPacket => {
                    switches += u64::from(
                        self.selector
                            .on_packet(p.source, p.level, p.speech, self.now),
                    );
                }
                Part::RecordLevel => self.dominant.record_level(p.source, p.level, self.now),
                Part::All => {
                    self.dominant.record_level(p.source, p.level, self.now);
                    switches += u64::from(
                        self.selector
                            .on_packet(p.source, p.level, p.speech, self.now),
                    );
                }
            }
            self.cursor += 1;
            self.left_in_frame -= 1;
            if self.left_in_frame == 0 {
                self.left_in_frame = self.n;
                if self.cursor == self.packets.len() {
                    self.cursor = 0;
                }
                self.now += FRAME;
                self.left_to_tick -= 1;
                if self.left_to_tick == 0 {
                    self.left_to_tick = TICK;
                    if part == Part::All {
                        if let Some(d) = self.dominant.decide(self.now) {
                            dominant_changes += 1;
                            switches += u64::from(self.selector.pin(Some(d), self.now));
                        }
                    }
                }
            }
        }
        self.counts.packets += packets;
        self.counts.switches += switches;
        self.counts.dominant_changes += dominant_changes;
        black_box(&self.selector);
    }

    /// Times `decisions` dominant-speaker decisions, each after a decision
    /// interval of levels (15 frames of every member, fed untimed). Returns
    /// the time spent in `decide` only.
    pub fn decide(&mut self, decisions: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..decisions {
            // Up to the next decision point: the rest of this frame and the
            // frames to the tick (`Part::RecordLevel` decides nothing itself).
            let frames = self.left_to_tick as u64;
            self.feed(
                (frames - 1) * self.n as u64 + self.left_in_frame as u64,
                Part::RecordLevel,
            );
            debug_assert_eq!(self.left_to_tick, TICK);
            let start = Instant::now();
            let changed = self.dominant.decide(self.now);
            total += start.elapsed();
            if changed.is_some() {
                self.counts.dominant_changes += 1;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_mostly_silent_with_one_talker() {
        let n = 50;
        let p = pattern(n, 60);
        assert_eq!(p.len(), CYCLE * n);
        let speech = p.iter().filter(|p| p.speech).count();
        // About one talker in 50 most of the time, plus the cut-ins and coughs.
        let share = speech as f64 / p.len() as f64;
        assert!((0.015..0.03).contains(&share), "speech share {share}");
        // Every member in every frame.
        for frame in p.chunks(n) {
            let mut seen: Vec<u32> = frame.iter().map(|p| p.source.0).collect();
            seen.sort_unstable();
            assert_eq!(seen, (1..=n as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn rigs_follow_the_talkers() {
        for n in [3, 50] {
            let mut rig = SelectionRig::new(n);
            assert_eq!(rig.counts, Counts::default());
            rig.feed(2 * rig.cycle_packets(), Part::OnPacket);
            // With 3 members all 3 are selected for good.
            assert_eq!(rig.counts.switches > 0, n > 3);
            rig.assert_selection_moved();
            rig.decide(CYCLE as u64 / TICK as u64);
            assert!(rig.counts.dominant_changes > 0);
            rig.assert_dominant_moved();
        }
    }
}
