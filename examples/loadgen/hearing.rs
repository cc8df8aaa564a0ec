//! Who hears whom: each decoding listener is checked to hear exactly the
//! speakers' tones, by the frames each speaker talked in the window.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::member::Member;
use crate::pool::lock;
use crate::window::SpeakerCounts;
use testkit::audio::TONES;
use testkit::client::Client;

/// A speaker must have talked this many frames in the window for a
/// decoding listener to be expected to hear it (0.5 s).
const MIN_TALKED_FRAMES: u64 = 25;

/// Frames of a tone that make it "heard" when it is not expected (one or
/// two transitional frames after a switch may decode as anything).
const STRAY_FRAMES: usize = 5;

/// The outcome over the decoding listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hearing {
    /// Listeners that decode and were checked.
    pub(crate) checked: usize,
    /// Of those, the ones that heard exactly the right speakers.
    pub(crate) right: usize,
}

/// Checks every decoding listener against what the speakers (in speaker
/// order) did in `[from, to)`; says on stderr what a wrong one heard.
pub(crate) fn check(
    listeners: &[Member],
    speakers: impl Iterator<Item = SpeakerCounts>,
    from: Instant,
    to: Instant,
    slots: usize,
) -> Hearing {
    let talked = talked_by_tone(speakers);
    let mut h = Hearing {
        checked: 0,
        right: 0,
    };
    for m in listeners.iter().filter(|m| m.checked) {
        h.checked += 1;
        let c = lock(&m.client);
        let heard = tone_counts(&c, from, to);
        if hears_right_speakers(&heard, &talked, slots) {
            h.right += 1;
        } else {
            eprintln!(
                "loadgen: {} heard tones (frames) {heard:?}, speakers talked (frames) {talked:?}",
                c.name
            );
        }
    }
    h
}

/// Frames talked per tone: speaker `i` has tone `i % TONES.len()`.
fn talked_by_tone(speakers: impl Iterator<Item = SpeakerCounts>) -> BTreeMap<usize, u64> {
    speakers
        .enumerate()
        .map(|(i, s)| (i % TONES.len(), s.frames_talked))
        .collect()
}

/// Frames per heard tone, in packets that arrived in `[from, to)`.
fn tone_counts(c: &Client, from: Instant, to: Instant) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for p in c.streams.values().flat_map(|s| &s.packets) {
        if p.at >= from && p.at < to {
            if let Some(t) = p.tone {
                // A 40 ms packet (hall mode) carries two frames.
                *counts.entry(t).or_default() += usize::from(p.frames);
            }
        }
    }
    counts
}

/// Whether a decoding listener heard exactly the speakers: no tone but
/// theirs (in more than a few frames), and every speaker that talked at
/// least [`MIN_TALKED_FRAMES`] in the window in at least half the frames it
/// talked; of those, as many as the listener has slots.
fn hears_right_speakers(
    heard: &BTreeMap<usize, usize>,
    talked: &BTreeMap<usize, u64>,
    slots: usize,
) -> bool {
    let stray = heard
        .iter()
        .any(|(t, n)| *n >= STRAY_FRAMES && !talked.contains_key(t));
    let due: Vec<(&usize, &u64)> = talked
        .iter()
        .filter(|(_, f)| **f >= MIN_TALKED_FRAMES)
        .collect();
    let heard_enough = due
        .iter()
        .filter(|(t, f)| heard.get(t).is_some_and(|n| *n as u64 * 2 >= **f))
        .count();
    !stray && heard_enough == due.len().min(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_speakers_check() {
        let talked: BTreeMap<usize, u64> = [(0, 200), (1, 150), (2, 10)].into();
        // Speaker 2 talked too little to be required.
        let heard: BTreeMap<usize, usize> = [(0, 190), (1, 140), (2, 3)].into();
        assert!(hears_right_speakers(&heard, &talked, 3));
        // A stray tone.
        let mut stray = heard.clone();
        stray.insert(5, 20);
        assert!(!hears_right_speakers(&stray, &talked, 3));
        // Speaker 1 heard in too few of its frames.
        let short: BTreeMap<usize, usize> = [(0, 190), (1, 40)].into();
        assert!(!hears_right_speakers(&short, &talked, 3));
        // More talkers than slots: as many as the slots.
        assert!(hears_right_speakers(&[(0, 190)].into(), &talked, 1));
        assert!(!hears_right_speakers(&[(0, 190)].into(), &talked, 2));
    }

    #[test]
    fn speakers_map_to_their_tones() {
        let talking = |frames_talked| SpeakerCounts {
            frames_talked,
            ..Default::default()
        };
        let talked = talked_by_tone([talking(7), talking(9)].into_iter());
        assert_eq!(talked, [(0, 7), (1, 9)].into());
    }
}
