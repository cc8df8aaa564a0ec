//! What a listener plays when its audio can come over two paths, and how
//! a switch between them sounds (docs/HYBRID.md): a member of a hybrid
//! channel receives over its mesh links, over the SFU, or during a switch
//! over both, and plays one of them. A path decodes all the time (as a
//! browser decodes a muted audio element's track); [`Playback`] records
//! which paths were heard when, so that every decoded frame can be judged
//! afterwards as played or not.
//!
//! The two measures of a switch, taken at the decoders:
//! - [`longest_gap`]: the longest stretch without a played frame of a tone,
//!   edges of the window included (a tone that stops is a gap up to the
//!   window's end);
//! - [`doubled_windows`]: 20 ms windows in which one tone was played from
//!   two streams: the same voice heard twice, as when both paths play.

use std::time::{Duration, Instant};

/// Where a member's audio comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// A peer-to-peer link per other member.
    Mesh,
    /// The SFU's slots.
    Sfu,
}

/// The stream a frame came on: a mesh link (by the other member's id) or
/// an SFU session (the member's `n`th, counted from 0), and its SSRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// The mesh link with this member.
    Mesh(u64),
    /// The member's `n`th SFU session.
    Sfu(usize),
}

impl Route {
    /// The path it belongs to.
    pub fn path(self) -> Path {
        match self {
            Route::Mesh(_) => Path::Mesh,
            Route::Sfu(_) => Path::Sfu,
        }
    }
}

/// One decoded 20 ms frame that carried a tone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// When it arrived.
    pub at: Instant,
    /// The tone (index into [`TONES`](crate::audio::TONES)).
    pub tone: usize,
    /// The link or session it came on.
    pub route: Route,
    /// The stream's SSRC on that route.
    pub ssrc: u32,
}

/// Which paths are heard, since when: a log of changes, so that a frame
/// can be judged by the playback at its arrival.
#[derive(Debug, Clone)]
pub struct Playback {
    /// (when, path, heard from then on), in time order.
    changes: Vec<(Instant, Path, bool)>,
}

impl Playback {
    /// Playback of `path` alone from `at` on.
    pub fn new(path: Path, at: Instant) -> Playback {
        Playback {
            changes: vec![(at, path, true)],
        }
    }

    /// From `at` on, `path` is heard (`true`) or not.
    pub fn set(&mut self, path: Path, on: bool, at: Instant) {
        self.changes.push((at, path, on));
    }

    /// From `at` on, `to` is heard and the other path not: both change in
    /// the same instant, so no frame is played from both or from neither
    /// because of the switch itself.
    pub fn switch(&mut self, to: Path, at: Instant) {
        let other = match to {
            Path::Mesh => Path::Sfu,
            Path::Sfu => Path::Mesh,
        };
        self.set(other, false, at);
        self.set(to, true, at);
    }

    /// Whether `path` is heard now (after the last change).
    pub fn is_on(&self, path: Path) -> bool {
        self.changes
            .iter()
            .rev()
            .find(|(_, p, _)| *p == path)
            .is_some_and(|(_, _, on)| *on)
    }

    /// Whether a frame of `path` arriving at `at` is played. A frame that
    /// arrives at the very instant of a change is judged by the new state.
    pub fn plays(&self, path: Path, at: Instant) -> bool {
        self.changes
            .iter()
            .rev()
            .find(|(t, p, _)| *p == path && *t <= at)
            .is_some_and(|(_, _, on)| *on)
    }

    /// Of `frames`, those played, in arrival order.
    pub fn played(&self, frames: &[Frame]) -> Vec<Frame> {
        let mut out: Vec<Frame> = frames
            .iter()
            .filter(|f| self.plays(f.route.path(), f.at))
            .copied()
            .collect();
        out.sort_by_key(|f| f.at);
        out
    }
}

/// The longest time in `[from, to]` without a frame of `tone` in
/// `frames` (arrival order or not): between two consecutive ones, and from
/// `from` to the first and the last to `to`. The whole window when there
/// is none.
pub fn longest_gap(frames: &[Frame], tone: usize, from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = frames
        .iter()
        .filter(|f| f.tone == tone && f.at >= from && f.at <= to)
        .map(|f| f.at)
        .collect();
    times.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain([to]) {
        longest = longest.max(t.saturating_duration_since(last));
        last = t;
    }
    longest
}

/// Width of a doubled-voice window: one Opus frame.
pub const FRAME: Duration = Duration::from_millis(20);

/// How many 20 ms windows of `[from, to)` (counted from `from`) hold frames
/// of `tone` from two or more streams: each is 20 ms of one voice played
/// twice. Counted from the instant of a switch, a clean switch has none;
/// a window that straddles it may hold the old stream's last frame and the
/// new one's first (the new path's extra delay, heard again), so count
/// from the switch to judge it.
pub fn doubled_windows(frames: &[Frame], tone: usize, from: Instant, to: Instant) -> usize {
    let mut windows: std::collections::BTreeMap<u128, Vec<(Route, u32)>> = Default::default();
    for f in frames
        .iter()
        .filter(|f| f.tone == tone && f.at >= from && f.at < to)
    {
        let w = f.at.duration_since(from).as_nanos() / FRAME.as_nanos();
        let streams = windows.entry(w).or_default();
        if !streams.contains(&(f.route, f.ssrc)) {
            streams.push((f.route, f.ssrc));
        }
    }
    windows.values().filter(|s| s.len() > 1).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `tone` on `route` every 20 ms from `start` ms to `end` ms
    /// (exclusive), starting at `offset` ms after `t0`.
    fn every_frame(t0: Instant, tone: usize, route: Route, start: u64, end: u64) -> Vec<Frame> {
        (start..end)
            .step_by(20)
            .map(|ms| Frame {
                at: t0 + Duration::from_millis(ms),
                tone,
                route,
                ssrc: 7,
            })
            .collect()
    }

    /// Tone 1 for a second over the mesh from member 2, and over the SFU
    /// 7 ms later.
    fn two_paths(t0: Instant) -> Vec<Frame> {
        let mut frames = every_frame(t0, 1, Route::Mesh(2), 0, 1000);
        let later = t0 + Duration::from_millis(7);
        frames.extend(every_frame(later, 1, Route::Sfu(0), 0, 1000));
        frames
    }

    #[test]
    fn a_steady_stream_has_frame_sized_gaps() {
        let t0 = Instant::now();
        let f = every_frame(t0, 1, Route::Mesh(2), 0, 1000);
        let end = t0 + Duration::from_millis(990);
        assert_eq!(longest_gap(&f, 1, t0, end), FRAME);
        // Another tone was never there: the whole window.
        assert_eq!(longest_gap(&f, 2, t0, end), Duration::from_millis(990));
        assert_eq!(doubled_windows(&f, 1, t0, end), 0);
    }

    #[test]
    fn missing_frames_and_a_stop_before_the_end_are_gaps() {
        let t0 = Instant::now();
        let mut f = every_frame(t0, 1, Route::Mesh(2), 0, 1000);
        // Frames at 500..=580 ms lost: 480 → 600 ms.
        f.retain(|x| !(500..=580).contains(&x.at.duration_since(t0).as_millis()));
        let end = t0 + Duration::from_millis(980);
        assert_eq!(longest_gap(&f, 1, t0, end), Duration::from_millis(120));
        // The window runs on 300 ms past the last frame (980 ms).
        let later = t0 + Duration::from_millis(1280);
        assert_eq!(longest_gap(&f, 1, t0, later), Duration::from_millis(300));
    }

    #[test]
    fn a_switch_plays_one_path_then_the_other() {
        let t0 = Instant::now();
        let frames = two_paths(t0);
        let mut playback = Playback::new(Path::Mesh, t0);
        let at = t0 + Duration::from_millis(503);
        playback.switch(Path::Sfu, at);
        let played = playback.played(&frames);
        let end = t0 + Duration::from_millis(990);
        assert!(played
            .iter()
            .all(|f| (f.at < at) == (f.route == Route::Mesh(2))));
        assert_eq!(longest_gap(&played, 1, t0, end), FRAME);
        // After the switch one stream plays. Counted from the start, the
        // last mesh frame (500 ms) and the first SFU frame (507 ms) share
        // the window 500..520 ms: the 7 ms the second path lags behind.
        assert_eq!(doubled_windows(&played, 1, at, end), 0);
        assert_eq!(doubled_windows(&played, 1, t0, end), 1);
        assert!(!playback.is_on(Path::Mesh) && playback.is_on(Path::Sfu));
    }

    #[test]
    fn both_paths_playing_is_a_doubled_voice_and_neither_is_a_gap() {
        let t0 = Instant::now();
        let frames = two_paths(t0);
        let end = t0 + Duration::from_millis(990);

        let mut both = Playback::new(Path::Mesh, t0);
        both.set(Path::Sfu, true, t0 + Duration::from_millis(500));
        let played = both.played(&frames);
        // 500..990 ms: about 24 windows with both streams.
        let doubled = doubled_windows(&played, 1, t0, end);
        assert!((23..=25).contains(&doubled), "{doubled}");

        let mut neither = Playback::new(Path::Mesh, t0);
        neither.set(Path::Mesh, false, t0 + Duration::from_millis(500));
        neither.set(Path::Sfu, true, t0 + Duration::from_millis(700));
        let played = neither.played(&frames);
        // Last mesh frame at 480 ms, first SFU frame at 707 ms.
        assert_eq!(longest_gap(&played, 1, t0, end), Duration::from_millis(227));
        assert_eq!(doubled_windows(&played, 1, t0, end), 0);
    }

    #[test]
    fn two_tones_in_one_window_are_not_doubled() {
        let t0 = Instant::now();
        let mut frames = every_frame(t0, 1, Route::Mesh(2), 0, 400);
        frames.extend(every_frame(t0, 2, Route::Mesh(3), 0, 400));
        let end = t0 + Duration::from_millis(400);
        assert_eq!(doubled_windows(&frames, 1, t0, end), 0);
        assert_eq!(doubled_windows(&frames, 2, t0, end), 0);
    }
}
