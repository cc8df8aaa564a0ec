//! One step's measurement: wait for the new listeners' first audio, measure
//! a window, and derive every figure the report holds.

use std::time::Instant;

use crate::cli::Args;
use crate::first_audio::{self, JoinFigures};
use crate::hearing::{self, Hearing};
use crate::listener_stats::ListenerFigures;
use crate::member::Member;
use crate::pool::lock;
use crate::window::{SpeakerCounts, Window};
use testkit::client::ClientSpec;

/// Everything measured in one step.
#[derive(Debug)]
pub(crate) struct Measurement {
    pub(crate) speakers: usize,
    pub(crate) listeners: usize,
    /// Receive slots per listener: with more speakers than slots a listener
    /// hears only some of them.
    pub(crate) listener_slots: usize,
    pub(crate) joins: JoinFigures,
    pub(crate) window: Window,
    pub(crate) heard: ListenerFigures,
    /// What all speakers did in the window.
    pub(crate) spoken: SpeakerCounts,
    pub(crate) hearing: Hearing,
    /// Why there is no latency figure, if there is none.
    pub(crate) latency_unavailable: Option<&'static str>,
}

/// Waits (at most until `first_audio_by`) for every listener from
/// `first_new` on (this step's) to hear its first packet, then measures
/// one window of `--seconds`.
pub(crate) async fn measure(
    a: &Args,
    speakers: &[Member],
    listeners: &[Member],
    first_new: usize,
    first_audio_by: Instant,
) -> Measurement {
    let joins = first_audio::wait_for_first_audio(listeners, first_new, first_audio_by).await;
    let window = Window::measure(&a.pids, speakers, listeners, a.seconds).await;
    let heard = ListenerFigures::of(&window, listeners);
    let listener_slots = ClientSpec::listener().slots;
    let hearing = hearing::check(
        listeners,
        window.speakers(),
        window.from,
        window.to,
        listener_slots,
    );
    let speakers_negotiated = speakers
        .iter()
        .all(|m| lock(&m.client).ext_ids.abs_capture_time.is_some());
    Measurement {
        speakers: speakers.len(),
        listeners: listeners.len(),
        listener_slots,
        joins,
        spoken: window.speakers().sum(),
        latency_unavailable: heard.latency_unavailable(speakers_negotiated),
        heard,
        hearing,
        window,
    }
}
