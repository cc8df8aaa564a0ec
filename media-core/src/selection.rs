//! Per-packet routing: which voices are forwarded to listeners right now.
//!
//! This is the fast one of the two speeds of speaker selection (the slow one
//! is [`crate::dominant`]). It runs on every packet and must react within a
//! few packets of a new voice's onset, so it keeps only a short smoothed
//! level per voice and decides by comparison, never by a periodic scan.
//!
//! Rules:
//! - up to `max` voices are selected;
//! - a speech frame of an unselected voice takes a free place at once;
//! - when full, it replaces the selected voice that has been silent longest
//!   past `expiry`, else the quietest one if it is `hysteresis` dB louder;
//! - a pinned voice (the dominant speaker) is not replaced while it talks;
//!   once its smoothed level falls below speech (two or three packets into a
//!   pause) it is judged like any other, so that a new voice starting as the
//!   dominant one stops is heard at once rather than after the expiry.
//!
//! What counts as speech ([`is_speech`]) is decided by the level; the
//! sender's voice-activity flag only moves the bar.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::SourceId;

/// How much of each new level enters the smoothed level (a short EWMA: a
/// voice's level settles within about five 20 ms packets).
const SMOOTHING: f32 = 0.3;

/// How much louder than the speech level a packet whose sender says "no
/// voice activity" (V = 0) must be to count as speech, in dB. Browsers'
/// V=0 packets are background noise, well below -40 dBov after their noise
/// suppression; a sender without a VAD (aiortc, SIP gateways, music) sends
/// V = 0 on its loudest speech, which must still be heard.
const VAD_OFF_MARGIN_DB: u8 = 20;

/// How much quieter than the speech level a packet whose sender says "voice
/// activity" (V = 1) may be and still count as speech, in dB: a soft voice
/// far from the microphone.
const VAD_ON_ALLOWANCE_DB: u8 = 10;

/// Whether one packet counts as speech: its RFC 6464 `level` (0 = 0 dBov ..
/// 127 = silence) is at or above the bar, `speech_level`.
///
/// The voice-activity bit is advisory, as the level is what LiveKit, Jitsi
/// and mediasoup route by: V = 1 lowers the bar by
/// [`VAD_ON_ALLOWANCE_DB`], V = 0 raises it by [`VAD_OFF_MARGIN_DB`], and
/// neither vetoes loud audio. Without the bit the bar stays.
pub(crate) fn is_speech(level: u8, vad: Option<bool>, speech_level: u8) -> bool {
    let bar = match vad {
        Some(true) => speech_level.saturating_add(VAD_ON_ALLOWANCE_DB).min(126),
        Some(false) => speech_level.saturating_sub(VAD_OFF_MARGIN_DB),
        None => speech_level,
    };
    level <= bar
}

#[derive(Debug, Clone, Copy)]
struct SourceLevel {
    /// Smoothed loudness in dB above -127 dBov (higher is louder).
    loudness: f32,
    /// When this voice last sent speech.
    last_speech: Option<Instant>,
}

/// The loudest-N selector of one channel.
#[derive(Debug)]
pub(crate) struct SpeakerSelector {
    max: usize,
    expiry: Duration,
    /// Smoothed loudness below which a pinned voice is no longer protected.
    speech_loudness: f32,
    hysteresis: f32,
    levels: HashMap<SourceId, SourceLevel>,
    selected: Vec<SourceId>,
    pinned: Option<SourceId>,
}

impl SpeakerSelector {
    pub(crate) fn new(max: usize, expiry: Duration, hysteresis_db: u8, speech_level: u8) -> Self {
        SpeakerSelector {
            max,
            expiry,
            speech_loudness: 127.0 - speech_level.min(127) as f32,
            hysteresis: hysteresis_db as f32,
            levels: HashMap::new(),
            selected: Vec::with_capacity(max),
            pinned: None,
        }
    }

    /// The selected voices, in the order they were selected.
    pub(crate) fn selected(&self) -> &[SourceId] {
        &self.selected
    }

    pub(crate) fn is_selected(&self, source: SourceId) -> bool {
        self.selected.contains(&source)
    }

    /// Whether `source` sent speech within the expiry window before `now`.
    pub(crate) fn is_speaking(&self, source: SourceId, now: Instant) -> bool {
        self.levels
            .get(&source)
            .is_some_and(|l| !Self::expired(l, now, self.expiry))
    }

    /// Smoothed loudness of a voice (dB above -127 dBov), 0 when unknown.
    pub(crate) fn loudness(&self, source: SourceId) -> f32 {
        self.levels.get(&source).map_or(0.0, |l| l.loudness)
    }

    fn expired(level: &SourceLevel, now: Instant, expiry: Duration) -> bool {
        match level.last_speech {
            None => true,
            Some(t) => now.saturating_duration_since(t) > expiry,
        }
    }

    /// Feeds one packet's level. Returns true when the selection changed.
    pub(crate) fn on_packet(
        &mut self,
        source: SourceId,
        level: u8,
        speech: bool,
        now: Instant,
    ) -> bool {
        let loudness = 127.0 - level.min(127) as f32;
        let expiry = self.expiry;
        let entry = self.levels.entry(source).or_insert(SourceLevel {
            loudness,
            last_speech: None,
        });
        if Self::expired(entry, now, expiry) {
            // A voice that starts again is judged by its onset, not by the
            // silence before it: that is what gets it through in one packet.
            entry.loudness = if speech { loudness } else { 0.0 };
        } else {
            entry.loudness += SMOOTHING * (loudness - entry.loudness);
        }
        if speech {
            entry.last_speech = Some(now);
        }
        let entry = *entry;

        if !speech || self.selected.contains(&source) {
            return false;
        }
        if self.selected.len() < self.max {
            self.selected.push(source);
            return true;
        }
        let Some((victim_idx, victim_expired, victim_loudness)) = self.weakest(now) else {
            return false;
        };
        if victim_expired || entry.loudness > victim_loudness + self.hysteresis {
            self.selected[victim_idx] = source;
            return true;
        }
        false
    }

    /// The selected, unpinned voice to replace first: the one silent longest
    /// past expiry, else the quietest.
    fn weakest(&self, now: Instant) -> Option<(usize, bool, f32)> {
        let mut best: Option<(usize, bool, f32, Option<Instant>)> = None;
        for (i, s) in self.selected.iter().enumerate() {
            let l = self.levels.get(s).copied().unwrap_or(SourceLevel {
                loudness: 0.0,
                last_speech: None,
            });
            let exp = Self::expired(&l, now, self.expiry);
            if Some(*s) == self.pinned && !exp && l.loudness >= self.speech_loudness {
                continue;
            }
            let better = match best {
                None => true,
                Some((_, bexp, bloud, blast)) => match (exp, bexp) {
                    (true, false) => true,
                    (false, true) => false,
                    (true, true) => l.last_speech < blast,
                    (false, false) => l.loudness < bloud,
                },
            };
            if better {
                best = Some((i, exp, l.loudness, l.last_speech));
            }
        }
        best.map(|(i, e, l, _)| (i, e, l))
    }

    /// Pins the dominant speaker: it is selected (replacing the weakest if
    /// needed) and never replaced while pinned. Returns true when the
    /// selection changed.
    pub(crate) fn pin(&mut self, source: Option<SourceId>, now: Instant) -> bool {
        self.pinned = source;
        let Some(source) = source else { return false };
        if self.selected.contains(&source) || self.max == 0 {
            return false;
        }
        if self.selected.len() < self.max {
            self.selected.push(source);
            return true;
        }
        match self.weakest(now) {
            Some((i, _, _)) => {
                self.selected[i] = source;
                true
            }
            None => false,
        }
    }

    /// Replaces the selection with one decided elsewhere (a relay channel
    /// follows its origin). Returns true when it changed.
    pub(crate) fn set_selected(&mut self, selected: &[SourceId]) -> bool {
        let new: Vec<SourceId> = selected.iter().copied().take(self.max).collect();
        if new == self.selected {
            return false;
        }
        self.selected = new;
        true
    }

    /// Forgets a voice (left or muted). Returns true when the selection changed.
    pub(crate) fn remove(&mut self, source: SourceId) -> bool {
        self.levels.remove(&source);
        if self.pinned == Some(source) {
            self.pinned = None;
        }
        let before = self.selected.len();
        self.selected.retain(|s| *s != source);
        before != self.selected.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn sel() -> SpeakerSelector {
        SpeakerSelector::new(2, 150 * MS, 6, 60)
    }

    #[test]
    fn first_speech_packet_is_selected_at_once() {
        let t0 = testkit::epoch();
        let mut s = sel();
        assert!(!s.on_packet(SourceId(1), 127, false, t0));
        assert!(s.selected().is_empty());
        assert!(s.on_packet(SourceId(1), 30, true, t0));
        assert_eq!(s.selected(), &[SourceId(1)]);
    }

    #[test]
    fn a_similar_voice_does_not_displace_an_active_one() {
        let t0 = testkit::epoch();
        let mut s = sel();
        s.on_packet(SourceId(1), 30, true, t0);
        s.on_packet(SourceId(2), 30, true, t0);
        // Third voice 3 dB louder: within the hysteresis.
        assert!(!s.on_packet(SourceId(3), 27, true, t0 + 20 * MS));
        assert_eq!(s.selected(), &[SourceId(1), SourceId(2)]);
        // Much louder: replaces the quietest.
        s.on_packet(SourceId(2), 40, true, t0 + 20 * MS);
        assert!(s.on_packet(SourceId(3), 10, true, t0 + 40 * MS));
        assert!(s.is_selected(SourceId(3)));
        assert!(!s.is_selected(SourceId(2)));
    }

    #[test]
    fn an_expired_speaker_gives_way_to_any_new_one() {
        let t0 = testkit::epoch();
        let mut s = sel();
        s.on_packet(SourceId(1), 10, true, t0);
        s.on_packet(SourceId(2), 10, true, t0);
        // Voice 2 keeps talking, voice 1 goes silent.
        s.on_packet(SourceId(2), 10, true, t0 + 200 * MS);
        assert!(s.on_packet(SourceId(3), 50, true, t0 + 200 * MS));
        assert_eq!(s.selected(), &[SourceId(3), SourceId(2)]);
    }

    #[test]
    fn pinned_source_is_never_replaced() {
        let t0 = testkit::epoch();
        let mut s = sel();
        s.on_packet(SourceId(1), 50, true, t0);
        s.on_packet(SourceId(2), 40, true, t0);
        s.pin(Some(SourceId(1)), t0);
        assert!(s.on_packet(SourceId(3), 5, true, t0 + 20 * MS));
        assert!(s.is_selected(SourceId(1)));
        assert!(!s.is_selected(SourceId(2)));
    }

    #[test]
    fn a_pinned_source_that_pauses_gives_way() {
        let t0 = testkit::epoch();
        let mut s = sel();
        s.on_packet(SourceId(1), 10, true, t0);
        s.on_packet(SourceId(2), 10, true, t0);
        s.pin(Some(SourceId(1)), t0);
        // Voice 1 pauses: two silent packets bring its level below speech.
        s.on_packet(SourceId(1), 127, false, t0 + 20 * MS);
        s.on_packet(SourceId(1), 127, false, t0 + 40 * MS);
        s.on_packet(SourceId(2), 10, true, t0 + 40 * MS);
        assert!(s.on_packet(SourceId(3), 10, true, t0 + 40 * MS));
        assert_eq!(s.selected(), &[SourceId(3), SourceId(2)]);
    }

    #[test]
    fn pinning_an_unselected_source_selects_it() {
        let t0 = testkit::epoch();
        let mut s = sel();
        s.on_packet(SourceId(1), 10, true, t0);
        s.on_packet(SourceId(2), 20, true, t0);
        assert!(s.pin(Some(SourceId(3)), t0));
        assert!(s.is_selected(SourceId(3)));
        assert!(s.is_selected(SourceId(1)));
    }

    #[test]
    fn the_level_decides_and_the_v_bit_moves_the_bar() {
        // Default bar: -60 dBov.
        let speech = |level, vad| is_speech(level, vad, 60);
        // Without the bit: the bar itself.
        assert!(speech(60, None) && !speech(61, None));
        // V = 0 never vetoes loud audio (aiortc's tone, a SIP call) ...
        assert!(speech(0, Some(false)) && speech(20, Some(false)) && speech(40, Some(false)));
        // ... but background noise with V = 0 is not speech.
        assert!(!speech(41, Some(false)) && !speech(55, Some(false)));
        // V = 1 lets a soft voice through, never digital silence.
        assert!(speech(70, Some(true)) && !speech(71, Some(true)));
        assert!(!speech(127, Some(true)) && !is_speech(127, Some(true), 127));
        // Bars at the ends of the scale do not wrap.
        assert!(is_speech(0, Some(false), 5) && !is_speech(1, Some(false), 5));
    }

    #[test]
    fn a_voice_with_v_bit_zero_is_selected_beside_one_with_v_bit_one() {
        let t0 = testkit::epoch();
        let mut s = sel();
        // Voice 1 has a VAD (V = 1), voice 2 has none (V = 0 always, as
        // aiortc): both loud, both selected at their first packet.
        let speech = |level, vad| is_speech(level, vad, 60);
        assert!(s.on_packet(SourceId(1), 30, speech(30, Some(true)), t0));
        assert!(s.on_packet(SourceId(2), 25, speech(25, Some(false)), t0));
        assert_eq!(s.selected(), &[SourceId(1), SourceId(2)]);
        // Voice 2 keeps talking while voice 1 pauses past the expiry.
        for n in 1..=10u32 {
            let at = t0 + n * 20 * MS;
            s.on_packet(SourceId(2), 25, speech(25, Some(false)), at);
            s.on_packet(SourceId(1), 127, speech(127, Some(true)), at);
        }
        let now = t0 + 200 * MS;
        assert!(s.is_speaking(SourceId(2), now) && !s.is_speaking(SourceId(1), now));
        // Noise with V = 0 takes no place; a new voice takes voice 1's,
        // not that of the V=0 voice that is still talking.
        assert!(!s.on_packet(SourceId(4), 50, speech(50, Some(false)), now));
        assert!(s.on_packet(SourceId(3), 30, speech(30, Some(true)), now));
        assert_eq!(s.selected(), &[SourceId(3), SourceId(2)]);
    }

    #[test]
    fn removing_frees_the_place() {
        let t0 = testkit::epoch();
        let mut s = sel();
        s.on_packet(SourceId(1), 10, true, t0);
        assert!(s.remove(SourceId(1)));
        assert!(!s.remove(SourceId(1)));
        assert!(s.selected().is_empty());
    }
}
