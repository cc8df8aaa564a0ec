//! Dominant speaker identification from RFC 6464 audio levels.
//!
//! This is the three-time-scale algorithm of Ilana Volfin and Israel Cohen,
//! "Dominant Speaker Identification for Multipoint Videoconferencing"
//! (Computer Speech & Language 27(4), 2013), in the level-only form that
//! Jitsi Videobridge (`DominantSpeakerIdentification.java`, jitsi-utils) and
//! mediasoup (`ActiveSpeakerObserver.cpp`) use: instead of per-frame sub-band
//! SNRs it works on the audio level each packet carries (RFC 6464).
//!
//! Per voice it keeps the last [`HISTORY_LEN`] levels (1 s at 20 ms per
//! packet) and, at every decision, derives three activity counts:
//!
//! * immediate: the newest level quantised into `N1` sub-units (0..=12);
//! * medium: how many of the newest `N2` immediates exceed
//!   [`MEDIUM_THRESHOLD`] (0..=5, a 100 ms window);
//! * long: how many of the `N3` consecutive medium blocks of the history
//!   exceed [`LONG_THRESHOLD`], i.e. are fully active (0..=10, a 1 s window).
//!
//! Each count `v` out of `n` becomes a score, the log-likelihood ratio of a
//! binomial "speech" model against an exponential "non-speech" model (see
//! [`activity_score`]). A challenger replaces the current dominant speaker
//! only when the log ratio of its score to the dominant's exceeds `C1`, `C2`
//! and `C3` on all three time scales at once; among several qualifying
//! challengers the one with the largest medium-term ratio wins.
//!
//! The module is sans-IO: time only enters through the `now` arguments.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash};
use std::time::{Duration, Instant};

/// The quietest RFC 6464 level (-127 dBov), also the largest level value.
const MAX_LEVEL: u8 = 127;

/// Number of sub-units the level range is split into for the immediate
/// time scale (`N1` in the paper; 13 in Jitsi and mediasoup).
const N1: u8 = 13;

/// Number of immediates per medium block (`N2`; 5 in Jitsi and mediasoup).
const N2: usize = 5;

/// Number of medium blocks per long block (`N3`; 10 in Jitsi and mediasoup).
const N3: usize = 10;

/// Width of one immediate sub-unit in level steps: `ceil(127 / 13) = 10`
/// (Jitsi's `N1_SUBUNIT_LENGTH`).
const SUBUNIT: u8 = MAX_LEVEL.div_ceil(N1);

/// Levels kept per voice: one long block of `N3` medium blocks of `N2`
/// levels each (50 levels, 1 s of 20 ms packets).
const HISTORY_LEN: usize = N2 * N3;

/// An immediate above this many sub-units counts as active in a medium block
/// (Jitsi's `MEDIUM_THRESHOLD`). With 10-step sub-units an immediate of 8 or
/// more means a level of -47 dBov or louder.
const MEDIUM_THRESHOLD: u8 = 7;

/// A medium block with more than this many active immediates (i.e. all 5)
/// counts as active in the long block (Jitsi's `LONG_THRESHOLD`).
const LONG_THRESHOLD: u8 = 4;

/// Success probability of the binomial speech model on each time scale
/// (`p` in the paper; 0.5 on all scales in Jitsi and mediasoup).
const P1: f64 = 0.5;
const P2: f64 = 0.5;
const P3: f64 = 0.5;

/// Rates of the exponential non-speech model on the immediate, medium and
/// long time scales (the paper's lambda values, as used by Jitsi and
/// mediasoup).
const LAMBDA1: f64 = 0.78;
const LAMBDA2: f64 = 24.0;
const LAMBDA3: f64 = 47.0;

/// Thresholds on the log ratio challenger / dominant for the immediate,
/// medium and long time scales (`C1`, `C2`, `C3` of the paper's speaker
/// switch rule, as used by Jitsi and mediasoup).
const C1: f64 = 3.0;
const C2: f64 = 2.0;
const C3: f64 = 0.0;

/// Floor of every activity score: positive so that the ratio of two scores
/// and its logarithm are always defined (Jitsi's `MIN_SPEECH_ACTIVITY_SCORE`).
const MIN_ACTIVITY_SCORE: f64 = 1e-10;

/// A voice that reported no level for longer than this is assumed silent:
/// one silent level is added to its history per elapsed timeout (Jitsi's and
/// mediasoup's `LEVEL_IDLE_TIMEOUT`; above the usual 20 and 30 ms packet
/// durations).
const LEVEL_IDLE_TIMEOUT: Duration = Duration::from_millis(40);

/// Number of levels after which a per-voice noise floor may rise again
/// (15 s of 20 ms packets; Jitsi's `MIN_LEVEL_WINDOW_LENGTH`).
const MIN_LEVEL_WINDOW: u16 = 15 * 1000 / 20;

/// Upper bound on the per-voice noise gate, in internal units
/// (`127 - dBov`): levels of -40 dBov or louder always count as signal.
///
/// Not in Jitsi or mediasoup (they gate at "quietest level seen + one
/// sub-unit" without bound). Without this bound a voice that never sends
/// anything quieter than its speech (noise suppression, DTX) would have most
/// of its own speech gated away; background noise loud enough to reach this
/// bound is rare.
const NOISE_GATE_MAX: u8 = MAX_LEVEL - 40;

/// Deterministic hashing (no per-process random keys); iteration order never
/// depends on it anyway, see [`DominantSpeakerDetector::order`].
type FixedState = BuildHasherDefault<DefaultHasher>;

/// Identifies the dominant speaker of a channel from audio levels (Volfin & Cohen).
///
/// Feed one RFC 6464 level per received audio packet with
/// [`record_level`](Self::record_level) and call [`decide`](Self::decide)
/// about every [`DECISION_INTERVAL`](Self::DECISION_INTERVAL).
pub(crate) struct DominantSpeakerDetector<S> {
    speakers: HashMap<S, Speaker, FixedState>,
    /// The keys of `speakers`, ascending, so that decisions visit voices in
    /// a fixed order and ties go to the smallest voice.
    order: Vec<S>,
    dominant: Option<S>,
}

impl<S: Copy + Eq + Hash + Ord + fmt::Debug> DominantSpeakerDetector<S> {
    /// Suggested decision interval (300 ms).
    ///
    /// Jitsi's `DECISION_INTERVAL`; the algorithm's time scales are in
    /// levels, not in decisions, so other intervals work but change how
    /// quickly a switch is noticed.
    pub(crate) const DECISION_INTERVAL: Duration = Duration::from_millis(300);

    pub(crate) fn new() -> Self {
        Self {
            speakers: HashMap::with_hasher(FixedState::default()),
            order: Vec::new(),
            dominant: None,
        }
    }

    /// Record one audio level observation for `source` at `now`.
    /// `level` is RFC 6464 units: 0 = loudest (0 dBov), 127 = silence (-127 dBov).
    /// Callers pass one level per received audio packet (typically every 20 ms).
    ///
    /// Values above 127 are treated as silence. A `now` earlier than a
    /// previous one is accepted as if it were the latest time seen.
    pub(crate) fn record_level(&mut self, source: S, level: u8, now: Instant) {
        // Internally louder is larger, with 0 for silence (as in Jitsi,
        // which is fed `127 - level`).
        let level = MAX_LEVEL - level.min(MAX_LEVEL);
        if let Some(speaker) = self.speakers.get_mut(&source) {
            speaker.record(level, now);
            return;
        }
        let mut speaker = Speaker::new(now);
        speaker.record(level, now);
        self.speakers.insert(source, speaker);
        if let Err(at) = self.order.binary_search(&source) {
            self.order.insert(at, source);
        }
    }

    /// Forget a voice (left the channel, muted). If it was dominant, the dominant becomes None
    /// until the next decision picks another.
    pub(crate) fn remove_source(&mut self, source: S) {
        self.speakers.remove(&source);
        if let Ok(at) = self.order.binary_search(&source) {
            self.order.remove(at);
        }
        if self.dominant == Some(source) {
            self.dominant = None;
        }
    }

    /// Run one decision at `now` (call about every DECISION_INTERVAL).
    /// Returns `Some(new)` only when the dominant speaker changed (including from None to Some),
    /// None when it stayed the same.
    pub(crate) fn decide(&mut self, now: Instant) -> Option<S> {
        for source in &self.order {
            if let Some(speaker) = self.speakers.get_mut(source) {
                speaker.fill_idle(now);
                speaker.scores = speaker.evaluate();
            }
        }

        let current = self
            .dominant
            .and_then(|d| self.speakers.get(&d).map(|s| (d, s.scores)));
        let next = match current {
            Some((dominant, scores)) => self.challenger(dominant, scores),
            None => self.most_active(),
        };
        match next {
            Some(next) if self.dominant != Some(next) => {
                self.dominant = Some(next);
                Some(next)
            }
            _ => None,
        }
    }

    /// The current dominant speaker.
    pub(crate) fn dominant(&self) -> Option<S> {
        self.dominant
    }

    /// The speaker switch rule: the voice that beats the dominant on all
    /// three time scales, the largest medium-term ratio winning among several.
    fn challenger(&self, dominant: S, dominant_scores: Scores) -> Option<S> {
        let mut best_medium = C2;
        let mut winner = None;
        for &source in &self.order {
            if source == dominant {
                continue;
            }
            let Some(speaker) = self.speakers.get(&source) else {
                continue;
            };
            let s = speaker.scores;
            let immediate = (s.immediate / dominant_scores.immediate).ln();
            let medium = (s.medium / dominant_scores.medium).ln();
            let long = (s.long / dominant_scores.long).ln();
            if immediate > C1 && medium > C2 && long > C3 && medium > best_medium {
                best_medium = medium;
                winner = Some(source);
            }
        }
        winner
    }

    /// With nobody dominant: the voice with the highest medium-term score
    /// (then long, then immediate; ties to the smallest voice), provided it
    /// has any medium-term speech activity at all.
    fn most_active(&self) -> Option<S> {
        let mut best: Option<(S, Scores)> = None;
        for &source in &self.order {
            let Some(speaker) = self.speakers.get(&source) else {
                continue;
            };
            let s = speaker.scores;
            if s.medium <= MIN_ACTIVITY_SCORE {
                continue;
            }
            let better = match best {
                None => true,
                Some((_, b)) => s
                    .medium
                    .total_cmp(&b.medium)
                    .then(s.long.total_cmp(&b.long))
                    .then(s.immediate.total_cmp(&b.immediate))
                    .is_gt(),
            };
            if better {
                best = Some((source, s));
            }
        }
        best.map(|(source, _)| source)
    }
}

impl<S: Copy + Eq + Hash + Ord + fmt::Debug> Default for DominantSpeakerDetector<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: fmt::Debug> fmt::Debug for DominantSpeakerDetector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DominantSpeakerDetector")
            .field("sources", &self.order)
            .field("dominant", &self.dominant)
            .finish()
    }
}

/// Activity scores of one voice on the immediate, medium and long scales.
#[derive(Clone, Copy, Debug)]
struct Scores {
    immediate: f64,
    medium: f64,
    long: f64,
}

impl Scores {
    const SILENT: Scores = Scores {
        immediate: MIN_ACTIVITY_SCORE,
        medium: MIN_ACTIVITY_SCORE,
        long: MIN_ACTIVITY_SCORE,
    };
}

/// Level history and noise floor of one voice.
#[derive(Debug)]
struct Speaker {
    /// Ring buffer of levels in internal units (`127 - RFC 6464 level`,
    /// 0 = silence); the newest is just before `head`. Starts silent.
    levels: [u8; HISTORY_LEN],
    head: usize,
    /// Time of the newest level, real or filled in by [`Self::fill_idle`].
    last_sample_at: Instant,
    /// Quietest non-silent level seen (the noise floor); 0 = none yet.
    min_level: u8,
    /// Quietest level of the current window that may raise `min_level`;
    /// 0 = window not started.
    next_min_level: u8,
    next_min_window: u16,
    /// Scores of the latest decision.
    scores: Scores,
}

impl Speaker {
    fn new(now: Instant) -> Self {
        Self {
            levels: [0; HISTORY_LEN],
            head: 0,
            last_sample_at: now,
            min_level: 0,
            next_min_level: 0,
            next_min_window: 0,
            scores: Scores::SILENT,
        }
    }

    fn record(&mut self, level: u8, now: Instant) {
        self.fill_idle(now);
        self.push(level);
        self.update_min_level(level);
        self.last_sample_at = self.last_sample_at.max(now);
    }

    fn push(&mut self, level: u8) {
        self.levels[self.head] = level;
        self.head = (self.head + 1) % HISTORY_LEN;
    }

    /// The `age`-th newest level (0 = newest).
    fn level_back(&self, age: usize) -> u8 {
        self.levels[(self.head + HISTORY_LEN - 1 - age % HISTORY_LEN) % HISTORY_LEN]
    }

    /// Adds one silent level per [`LEVEL_IDLE_TIMEOUT`] elapsed since the
    /// newest level (at most a full history).
    fn fill_idle(&mut self, now: Instant) {
        let idle = now.saturating_duration_since(self.last_sample_at);
        if idle <= LEVEL_IDLE_TIMEOUT {
            return;
        }
        let missing = idle.as_nanos() / LEVEL_IDLE_TIMEOUT.as_nanos();
        if missing >= HISTORY_LEN as u128 {
            self.levels = [0; HISTORY_LEN];
            self.last_sample_at = now;
            return;
        }
        // `missing` < HISTORY_LEN, so the casts are lossless and the sum
        // stays at or before `now`.
        for _ in 0..missing {
            self.push(0);
        }
        self.last_sample_at = self
            .last_sample_at
            .checked_add(LEVEL_IDLE_TIMEOUT * missing as u32)
            .unwrap_or(now);
    }

    /// Tracks the noise floor: it drops at once to any quieter non-silent
    /// level and rises slowly, to the geometric mean of the old floor and the
    /// quietest level of a window of [`MIN_LEVEL_WINDOW`] louder levels
    /// (Jitsi's scheme).
    fn update_min_level(&mut self, level: u8) {
        if level == 0 {
            return;
        }
        if self.min_level == 0 || level < self.min_level {
            self.min_level = level;
            self.next_min_level = 0;
            self.next_min_window = 0;
        } else if self.next_min_level == 0 {
            self.next_min_level = level;
            self.next_min_window = 1;
        } else {
            self.next_min_level = self.next_min_level.min(level);
            self.next_min_window += 1;
            if self.next_min_window >= MIN_LEVEL_WINDOW {
                let mean = (f64::from(self.min_level) * f64::from(self.next_min_level)).sqrt();
                // Both factors are in 1..=127, so is their geometric mean.
                self.min_level = mean.clamp(1.0, f64::from(MAX_LEVEL)) as u8;
                self.next_min_level = 0;
                self.next_min_window = 0;
            }
        }
    }

    fn evaluate(&self) -> Scores {
        // Levels below the noise gate count as silence, which puts voices
        // with different background noise on an equal footing.
        let gate = self.min_level.saturating_add(SUBUNIT).min(NOISE_GATE_MAX);
        let mut newest_immediate = 0;
        let mut newest_medium = 0;
        let mut long = 0;
        for block in 0..N3 {
            let mut active = 0;
            for i in block * N2..(block + 1) * N2 {
                let level = self.level_back(i);
                let immediate = if level < gate { 0 } else { level / SUBUNIT };
                if i == 0 {
                    newest_immediate = immediate;
                }
                if immediate > MEDIUM_THRESHOLD {
                    active += 1;
                }
            }
            if block == 0 {
                newest_medium = active;
            }
            if active > LONG_THRESHOLD {
                long += 1;
            }
        }
        Scores {
            immediate: activity_score(newest_immediate, N1, P1, LAMBDA1),
            medium: activity_score(newest_medium, N2 as u8, P2, LAMBDA2),
            long: activity_score(long, N3 as u8, P3, LAMBDA3),
        }
    }
}

/// Speech activity score of `active` active units out of `units`:
/// `ln[C(n, v) p^v (1-p)^(n-v)] - ln[lambda e^(-lambda v)]`, the log ratio of
/// a binomial speech likelihood to an exponential non-speech likelihood
/// (Volfin & Cohen), floored at [`MIN_ACTIVITY_SCORE`].
fn activity_score(active: u8, units: u8, p: f64, lambda: f64) -> f64 {
    let v = active.min(units);
    let score =
        ln_binomial(units, v) + f64::from(v) * p.ln() + f64::from(units - v) * (1.0 - p).ln()
            - lambda.ln()
            + lambda * f64::from(v);
    if score > MIN_ACTIVITY_SCORE {
        score
    } else {
        MIN_ACTIVITY_SCORE
    }
}

/// `ln C(n, k)`, exact for the small `n` used here.
fn ln_binomial(n: u8, k: u8) -> f64 {
    let k = u64::from(k.min(n - k));
    let n = u64::from(n);
    let mut c: u64 = 1;
    for i in 0..k {
        // c * (n - i) is divisible by i + 1 at every step.
        c = c * (n - i) / (i + 1);
    }
    (c as f64).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;
    const SILENCE: u8 = 127;
    const FRAME_MS: u64 = 20;
    const DECISION_MS: u64 = 300;

    /// A talker's levels, -20 to -35 dBov, one per 20 ms frame.
    fn talk(ms: u64) -> u8 {
        const PATTERN: [u8; 8] = [22, 28, 20, 33, 25, 30, 24, 35];
        PATTERN[(ms / FRAME_MS % 8) as usize]
    }

    /// Drives a detector with one level per voice per 20 ms frame and a
    /// decision every 300 ms, recording every change it reports.
    struct Sim {
        det: DominantSpeakerDetector<u32>,
        t0: Instant,
        now_ms: u64,
        next_decision_ms: u64,
        changes: Vec<(u64, u32)>,
    }

    impl Sim {
        fn new(t0: Instant) -> Self {
            Self {
                det: DominantSpeakerDetector::new(),
                t0,
                now_ms: 0,
                next_decision_ms: DECISION_MS,
                changes: Vec::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// Runs `ms` of frames; `levels(t)` gives the `(source, level)`
        /// pairs of the frame at `t` ms (absent voices send nothing).
        fn run(&mut self, ms: u64, levels: impl Fn(u64) -> Vec<(u32, u8)>) {
            let end = self.now_ms + ms;
            while self.now_ms < end {
                let now = self.at(self.now_ms);
                for (source, level) in levels(self.now_ms) {
                    self.det.record_level(source, level, now);
                }
                self.now_ms += FRAME_MS;
                if self.now_ms >= self.next_decision_ms {
                    let now = self.at(self.now_ms);
                    if let Some(s) = self.det.decide(now) {
                        assert_eq!(self.det.dominant(), Some(s));
                        self.changes.push((self.now_ms, s));
                    }
                    self.next_decision_ms += DECISION_MS;
                }
            }
        }
    }

    #[test]
    fn constants_match_the_references() {
        assert_eq!(SUBUNIT, 10);
        assert_eq!(HISTORY_LEN, 50);
        // A fully active long window beats one with a single active block.
        assert!(activity_score(10, 10, P3, LAMBDA3) > activity_score(1, 10, P3, LAMBDA3));
        assert_eq!(activity_score(0, 5, P2, LAMBDA2), MIN_ACTIVITY_SCORE);
        // ln C(13, 6) = ln 1716
        assert!((ln_binomial(13, 6) - 1716f64.ln()).abs() < 1e-12);
        assert_eq!(ln_binomial(10, 0), 0.0);
    }

    #[test]
    fn single_talker_becomes_dominant_at_first_decision() {
        let t0 = testkit::epoch();
        let mut sim = Sim::new(t0);
        sim.run(1000, |_| vec![(A, SILENCE), (B, SILENCE)]);
        assert!(sim.changes.is_empty());
        assert_eq!(sim.det.dominant(), None);

        // A starts at 1000 ms; the next decision is at 1200 ms.
        sim.run(200, |t| vec![(A, talk(t)), (B, SILENCE)]);
        assert_eq!(sim.changes, vec![(1200, A)]);

        // A voice never heard before that talks is picked from its first level.
        let mut det = DominantSpeakerDetector::new();
        det.record_level(C, 25, t0 + Duration::from_millis(10));
        assert_eq!(det.decide(t0 + Duration::from_millis(20)), Some(C));
    }

    /// A talks, stops, B takes over. B's long-term count (fully active 100 ms
    /// blocks in the last second) must exceed A's: after k frames of B (and k
    /// silent frames of A) that is ⌊k/5⌋ > ⌊(50-k)/5⌋, i.e. k >= 26 (520 ms);
    /// decisions every 300 ms add at most 300 ms.
    #[test]
    fn switches_to_the_next_talker() {
        let t0 = testkit::epoch();
        let mut sim = Sim::new(t0);
        sim.run(3000, |t| vec![(A, talk(t)), (B, SILENCE)]);
        assert_eq!(sim.changes, vec![(300, A)]);
        sim.run(3000, |t| vec![(A, SILENCE), (B, talk(t))]);
        assert_eq!(sim.changes.len(), 2, "{:?}", sim.changes);
        let (at, who) = sim.changes[1];
        assert_eq!(who, B);
        let delay = at - 3000;
        assert!((520..=820).contains(&delay), "switch delay {delay} ms");
        assert_eq!(delay, 600);
    }

    /// As above, but A stops sending altogether (muted, DTX). A's history is
    /// then filled with one silent level per 40 ms idle timeout, half the
    /// packet rate: B wins once ⌊e/100⌋ > ⌊(50 - ⌊e/40⌋)/5⌋ after e ms, from
    /// about 700 ms, plus at most one decision interval.
    #[test]
    fn switches_when_the_dominant_stops_sending() {
        let t0 = testkit::epoch();
        let mut sim = Sim::new(t0);
        sim.run(3000, |t| vec![(A, talk(t)), (B, SILENCE)]);
        sim.run(3000, |t| vec![(B, talk(t))]);
        assert_eq!(sim.changes.len(), 2, "{:?}", sim.changes);
        let (at, who) = sim.changes[1];
        assert_eq!(who, B);
        let delay = at - 3000;
        assert!((600..=1000).contains(&delay), "switch delay {delay} ms");
        assert_eq!(delay, 900);
    }

    /// A short loud burst cannot build up the long-term (1 s) activity of a
    /// steady talker, not even when it falls into one of the talker's pauses
    /// and so wins on the immediate and medium time scales.
    #[test]
    fn short_burst_does_not_take_dominance() {
        let t0 = testkit::epoch();
        let mut sim = Sim::new(t0);
        // A talks with a 200 ms pause between phrases every 1.6 s
        // (3100..3300 ms is one of them). C coughs at full scale for 200 ms
        // once inside that pause and once while A talks.
        sim.run(6000, |t| {
            let pause = (t + 100) % 1600 < 200 && t > 200;
            let a = if pause { SILENCE } else { talk(t) };
            let coughing = (3100..3300).contains(&t) || (4000..4200).contains(&t);
            let c = if coughing {
                (t / FRAME_MS % 3) as u8
            } else {
                SILENCE
            };
            vec![(A, a), (C, c)]
        });
        assert_eq!(sim.changes, vec![(300, A)]);
        assert_eq!(sim.det.dominant(), Some(A));
    }

    #[test]
    fn background_noise_never_dominates() {
        let t0 = testkit::epoch();
        let mut sim = Sim::new(t0);
        // Eight voices of steady quiet noise between -90 and -127 dBov.
        let noise = |t: u64| -> Vec<(u32, u8)> {
            (10..18u32)
                .map(|s| {
                    let base = 90 + 4 * (s - 10) as u8;
                    let wobble = (t / FRAME_MS % 3) as u8;
                    (s, (base + wobble).min(SILENCE))
                })
                .collect()
        };
        sim.run(5000, |t| {
            let mut v = noise(t);
            v.push((A, SILENCE));
            v
        });
        assert!(sim.changes.is_empty(), "{:?}", sim.changes);
        assert_eq!(sim.det.dominant(), None);

        sim.run(5000, |t| {
            let mut v = noise(t);
            v.push((A, talk(t)));
            v
        });
        assert_eq!(sim.changes, vec![(5100, A)]);

        // A falls silent; the noise still does not take over.
        sim.run(5000, |t| {
            let mut v = noise(t);
            v.push((A, SILENCE));
            v
        });
        assert_eq!(sim.changes, vec![(5100, A)]);
    }

    #[test]
    fn loud_steady_noise_is_gated_by_its_floor() {
        let t0 = testkit::epoch();
        let mut sim = Sim::new(t0);
        // A fan at -45 dBov: loud enough to count as active were it not
        // below the voice's own noise gate.
        sim.run(5000, |t| vec![(C, 45 + (t / FRAME_MS % 2) as u8)]);
        assert!(sim.changes.is_empty(), "{:?}", sim.changes);

        // The noisy voice talks over its noise and is recognised.
        sim.run(1000, |t| vec![(C, talk(t))]);
        assert_eq!(sim.changes, vec![(5100, C)]);
    }

    #[test]
    fn remove_and_repeated_decisions() {
        let t0 = testkit::epoch();
        let mut sim = Sim::new(t0);
        sim.run(600, |t| vec![(A, talk(t)), (B, SILENCE)]);
        assert_eq!(sim.changes, vec![(300, A)]);
        let now = sim.at(sim.now_ms);
        assert_eq!(sim.det.decide(now), None);
        assert_eq!(sim.det.decide(now), None);
        assert_eq!(sim.det.dominant(), Some(A));

        // Removing others or unknown voices leaves A dominant.
        sim.det.remove_source(B);
        sim.det.remove_source(99);
        assert_eq!(sim.det.dominant(), Some(A));

        sim.det.remove_source(A);
        assert_eq!(sim.det.dominant(), None);
        assert_eq!(sim.det.decide(now), None);
        assert_eq!(sim.det.dominant(), None);

        // B comes back talking: one change, then none.
        sim.run(300, |t| vec![(B, talk(t))]);
        assert_eq!(sim.changes, vec![(300, A), (900, B)]);
        let now = sim.at(sim.now_ms);
        assert_eq!(sim.det.decide(now), None);
        assert_eq!(sim.det.dominant(), Some(B));
    }

    #[test]
    fn ties_go_to_the_smallest_source() {
        let t0 = testkit::epoch();
        let mut det = DominantSpeakerDetector::new();
        for i in 0..15u64 {
            let now = t0 + Duration::from_millis(i * FRAME_MS);
            for s in [7u32, 3, 5] {
                det.record_level(s, talk(i * FRAME_MS), now);
            }
        }
        assert_eq!(det.decide(t0 + Duration::from_millis(300)), Some(3));
    }

    #[test]
    fn tolerates_any_level_and_time_going_backwards() {
        let t0 = testkit::epoch();
        let mut det = DominantSpeakerDetector::<u8>::default();
        let mut ms: u64 = 10_000;
        for i in 0..20_000u64 {
            let level = (i * 37 % 256) as u8;
            let source = (i % 5) as u8;
            // Mostly forward, sometimes far back, sometimes a long gap.
            ms = match i % 97 {
                0 => ms.saturating_sub(7_000),
                1 => ms + 3_600_000,
                _ => ms + 7,
            };
            let now = t0 + Duration::from_millis(ms);
            det.record_level(source, level, now);
            if i % 43 == 0 {
                det.decide(now);
                det.decide(t0 + Duration::from_millis(ms / 2));
            }
            if i % 1000 == 999 {
                det.remove_source(source);
            }
            assert!(det.dominant().is_none_or(|d| d < 5));
        }
        assert!(!format!("{det:?}").is_empty());
    }
}
