//! Opus tone speakers and tone detectors for simulated tests.
//!
//! Each simulated speaker sends a distinct pure tone, encoded with real Opus,
//! so that a listener can decode what it receives and tell whom it hears.
//! [`TONES`] holds eight frequencies that Opus reproduces well and that a
//! Goertzel filter over one 20 ms frame separates cleanly.
//!
//! Decoder transitions: the first frame or two an Opus decoder produces after
//! it starts, after concealment, or after the stream it decodes switches to a
//! different source (a forwarder switching speakers on one listener slot) can
//! be partly transitional, a blend of the old and the new signal. Detection on
//! such a frame may report either tone or `None`; tests should allow two
//! frames of settling after any switch.

use media_core::level_from_pcm;

use crate::rng::SplitMix64;

/// Samples per 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;

/// Sample rate of everything in this module.
const SAMPLE_RATE: u32 = 48_000;

/// Largest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME_SAMPLES: usize = 5760;

/// Output buffer size for one encoded packet (the size libopus recommends).
const MAX_PACKET_BYTES: usize = 4000;

/// Quietest level (RFC 6464, -dBov) counted as voice: a frame is voiced, and
/// a detector looks for a tone in it, only at -60 dBov or louder.
const VOICED_MAX_LEVEL: u8 = 60;

/// Share of the signal energy the strongest candidate tone must hold for
/// [`ToneDetector::detect`] to report it.
const MIN_ENERGY_FRACTION: f64 = 0.5;

/// Eight tone frequencies (Hz) for distinct simulated speakers.
///
/// All are multiples of 50 Hz, so each completes a whole number of periods in
/// one 20 ms frame (and the Goertzel filters over a frame are orthogonal);
/// they are 50 Hz times distinct primes, so none is a harmonic of another, and
/// at least 200 Hz apart. All lie well inside Opus's narrowband range, so
/// Opus VOIP at its default bitrate reproduces them in any mode; decoded
/// [`ToneSpeaker`] frames keep over 99% of their energy at the tone.
pub const TONES: [f32; 8] = [350.0, 550.0, 850.0, 1150.0, 1450.0, 1850.0, 2150.0, 2350.0];

/// One encoded 20 ms Opus frame with the level a real sender would put in the
/// RFC 6464 extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The Opus packet (RTP payload).
    pub payload: Vec<u8>,
    /// RFC 6464 level of the frame's PCM: 0 = 0 dBov (loudest) .. 127 = silence.
    pub level: u8,
    /// Voice activity, as the extension's V bit: louder than -60 dBov
    /// (`level <= 60`).
    pub voiced: bool,
}

/// A talker that produces a pure tone of `freq_hz` at `amplitude` (0.0..=1.0
/// of full scale), encoded with real Opus (VOIP application, 48 kHz mono,
/// 20 ms frames, default bitrate, no DTX).
///
/// The encoder is tuned so that a listener's decoder can be switched from one
/// speaker's stream to another's (as a forwarder does on one listener slot)
/// and settle on the new tone within two frames: it is told the signal is
/// music (`OPUS_SET_SIGNAL(MUSIC)`; libopus codes these tones with CELT
/// anyway) and its inter-frame prediction is disabled
/// (`OPUS_SET_PREDICTION_DISABLED`). The packets are ordinary Opus. With a
/// browser's settings (signal auto, prediction on), CELT's inter-frame state
/// carries over such a switch and the previous tone, or none, can be
/// detected for ten frames or more after it.
#[derive(Debug)]
pub struct ToneSpeaker {
    encoder: opus::Encoder,
    freq_hz: f32,
    amplitude: f32,
    /// Phase of the next sample, radians in `0..2π`.
    phase: f64,
    pcm: Vec<i16>,
    out: Vec<u8>,
}

impl ToneSpeaker {
    /// A speaker of a tone at `freq_hz` and `amplitude` (clamped to
    /// 0.0..=1.0 of full scale).
    ///
    /// # Panics
    /// Only if libopus fails to create an encoder.
    pub fn new(freq_hz: f32, amplitude: f32) -> Self {
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .expect("create Opus encoder");
        encoder
            .set_signal(opus::Signal::Music)
            .expect("configure Opus encoder");
        encoder
            .set_prediction_disabled(true)
            .expect("configure Opus encoder");
        Self {
            encoder,
            freq_hz,
            amplitude: clamp_amplitude(amplitude),
            phase: 0.0,
            pcm: vec![0; FRAME_SAMPLES],
            out: vec![0; MAX_PACKET_BYTES],
        }
    }

    /// Change the amplitude (clamped to 0.0..=1.0) from the next frame on;
    /// 0.0 is silence (a talk pause). The tone's phase keeps running.
    pub fn set_amplitude(&mut self, amplitude: f32) {
        self.amplitude = clamp_amplitude(amplitude);
    }

    /// Current amplitude, 0.0..=1.0 of full scale.
    pub fn amplitude(&self) -> f32 {
        self.amplitude
    }

    /// The tone's frequency in Hz.
    pub fn freq_hz(&self) -> f32 {
        self.freq_hz
    }

    /// Encode the next 20 ms (phase continuous across calls).
    ///
    /// `level` is the RFC 6464 level ([`media_core::level_from_pcm`]) of the PCM
    /// fed to the encoder; `voiced` is `level <= 60` (louder than -60 dBov).
    ///
    /// # Panics
    /// Only if libopus fails to encode a valid frame.
    pub fn next_frame(&mut self) -> EncodedFrame {
        let step = std::f64::consts::TAU * f64::from(self.freq_hz) / f64::from(SAMPLE_RATE);
        let scale = f64::from(self.amplitude) * f64::from(i16::MAX);
        for sample in &mut self.pcm {
            *sample = (scale * self.phase.sin()).round() as i16;
            self.phase = (self.phase + step).rem_euclid(std::f64::consts::TAU);
        }
        let level = level_from_pcm(&self.pcm);
        let n = self
            .encoder
            .encode(&self.pcm, &mut self.out)
            .expect("Opus encode of one 20 ms frame");
        EncodedFrame {
            payload: self.out[..n].to_vec(),
            level,
            voiced: level <= VOICED_MAX_LEVEL,
        }
    }
}

impl ToneSpeaker {
    /// Turns Opus DTX (discontinuous transmission) on or off in the encoder
    /// (`OPUS_SET_DTX`). With DTX on, libopus codes a silent frame after
    /// about 200 ms of silence as a 1-byte packet (the TOC only) that need
    /// not be sent, except one real frame (comfort noise; here a 3-byte CELT
    /// silence frame) every 400 ms; [`DtxGate`] decides, as WebRTC does,
    /// which of them to send. Returns whether DTX is on now.
    pub fn set_dtx(&mut self, on: bool) -> bool {
        self.encoder.set_dtx(on).is_ok() && self.encoder.get_dtx().unwrap_or(false)
    }
}

/// Which encoded frames an Opus sender with DTX puts on the wire, as
/// WebRTC's `WebRtcOpus_Encode` (`modules/audio_coding/codecs/opus/
/// opus_interface.cc`) decides: a packet of at most 2 bytes is a DTX frame
/// (TOC only); the first one after a run of real frames is sent, to let the
/// decoder know the encoder entered DTX, the following ones are not; every
/// real frame (libopus makes one every 400 ms during silence, coding the
/// background noise) is sent. So during a long silence two packets go out
/// about every 400 ms (the real frame and the DTX frame after it) instead
/// of twenty. Without DTX every frame is sent.
#[derive(Debug, Clone, Default)]
pub struct DtxGate {
    in_dtx: bool,
}

impl DtxGate {
    /// Largest Opus packet that is a DTX frame (TOC byte and at most one
    /// more).
    pub const DTX_MAX_BYTES: usize = 2;

    /// Whether to send a frame whose Opus packet has `len` bytes.
    pub fn should_send(&mut self, len: usize) -> bool {
        if len <= Self::DTX_MAX_BYTES {
            let first = !self.in_dtx;
            self.in_dtx = true;
            first
        } else {
            self.in_dtx = false;
            true
        }
    }

    /// Whether the sender is in DTX (its last frame was a DTX frame).
    pub fn in_dtx(&self) -> bool {
        self.in_dtx
    }
}

/// When a speaker talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TalkPattern {
    /// Talks all the time (while its amplitude is above 0).
    #[default]
    Continuous,
    /// Alternates talk spurts and pauses of exponentially distributed
    /// lengths (in whole 20 ms frames, at least one frame, at most
    /// [`TalkSchedule::MAX_FRAMES`]), drawn from a SplitMix64 seeded with
    /// `seed`: the same seed gives the same frame-by-frame schedule.
    Conversation {
        /// Seed of the schedule.
        seed: u64,
        /// Mean length of a talk spurt in milliseconds.
        spurt_mean_ms: u32,
        /// Mean length of a pause in milliseconds.
        pause_mean_ms: u32,
    },
}

impl TalkPattern {
    /// A conversational talker: spurts of 1.0 s and pauses of 1.5 s on
    /// average, so it talks 40% of the time (ITU-T P.59's artificial
    /// conversational speech has exponential talkspurts of 1.004 s and
    /// pauses of 1.587 s on average).
    pub fn conversation(seed: u64) -> Self {
        TalkPattern::Conversation {
            seed,
            spurt_mean_ms: 1000,
            pause_mean_ms: 1500,
        }
    }
}

/// A [`TalkPattern`] unrolled frame by frame.
#[derive(Debug, Clone)]
pub struct TalkSchedule {
    pattern: TalkPattern,
    rng: SplitMix64,
    talking: bool,
    /// Frames left in the current spurt or pause.
    left: u32,
}

impl TalkSchedule {
    /// Longest spurt or pause, in frames (60 s).
    pub const MAX_FRAMES: u32 = 3000;

    /// The schedule of `pattern` from its start.
    pub fn new(pattern: TalkPattern) -> Self {
        let mut s = TalkSchedule {
            pattern,
            rng: SplitMix64::new(0),
            talking: true,
            left: u32::MAX,
        };
        if let TalkPattern::Conversation {
            seed,
            spurt_mean_ms,
            pause_mean_ms,
        } = pattern
        {
            s.rng = SplitMix64::new(seed);
            // Start in a spurt or a pause with their long-run shares.
            let total = f64::from(spurt_mean_ms) + f64::from(pause_mean_ms);
            let p_talk = if total > 0.0 {
                f64::from(spurt_mean_ms) / total
            } else {
                1.0
            };
            s.talking = s.rng.next_unit() < p_talk;
            s.left = s.draw();
        }
        s
    }

    /// Length in frames of a new spurt (`self.talking`) or pause.
    fn draw(&mut self) -> u32 {
        let TalkPattern::Conversation {
            spurt_mean_ms,
            pause_mean_ms,
            ..
        } = self.pattern
        else {
            return u32::MAX;
        };
        let mean = f64::from(if self.talking {
            spurt_mean_ms
        } else {
            pause_mean_ms
        });
        let ms = -mean * (1.0 - self.rng.next_unit()).ln();
        let frames = (ms / 20.0).round();
        if frames.is_finite() {
            (frames as u32).clamp(1, Self::MAX_FRAMES)
        } else {
            1
        }
    }

    /// Whether the next 20 ms frame is in a talk spurt.
    pub fn next_frame(&mut self) -> bool {
        if matches!(self.pattern, TalkPattern::Continuous) {
            return true;
        }
        if self.left == 0 {
            self.talking = !self.talking;
            self.left = self.draw();
        }
        self.left -= 1;
        self.talking
    }
}

fn clamp_amplitude(amplitude: f32) -> f32 {
    if amplitude.is_nan() {
        0.0
    } else {
        amplitude.clamp(0.0, 1.0)
    }
}

/// Identifies which of a known set of tones a stretch of decoded PCM carries
/// (Goertzel filter at each candidate frequency).
#[derive(Debug, Clone)]
pub struct ToneDetector {
    freqs: Vec<f32>,
    /// Goertzel coefficient `2 cos(2π f / fs)` per candidate.
    coeffs: Vec<f64>,
}

impl ToneDetector {
    /// A detector for the candidate frequencies `freqs` (Hz, at 48 kHz).
    pub fn new(freqs: &[f32]) -> Self {
        let coeffs = freqs
            .iter()
            .map(|&f| 2.0 * (std::f64::consts::TAU * f64::from(f) / f64::from(SAMPLE_RATE)).cos())
            .collect();
        Self {
            freqs: freqs.to_vec(),
            coeffs,
        }
    }

    /// The candidate frequencies, in index order.
    pub fn freqs(&self) -> &[f32] {
        &self.freqs
    }

    /// Index into `freqs` of the tone that carries most of the PCM's energy,
    /// or `None` when the PCM is (near) silent (quieter than -60 dBov) or no
    /// candidate holds at least half of the signal energy.
    ///
    /// Works on any length, best on whole frames ([`FRAME_SAMPLES`]). A frame
    /// that straddles a transition (decoder start, switch of source) may give
    /// either tone or `None`.
    pub fn detect(&self, pcm: &[i16]) -> Option<usize> {
        if level_from_pcm(pcm) > VOICED_MAX_LEVEL {
            return None;
        }
        let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        let n = pcm.len() as f64;
        let mut best: Option<(usize, f64)> = None;
        for (i, &coeff) in self.coeffs.iter().enumerate() {
            // A sinusoid at the filter's frequency and amplitude A over N
            // samples gives |X|^2 = (A N / 2)^2 while its energy is A^2 N / 2,
            // so 2 |X|^2 / N estimates the energy the tone carries.
            let fraction = 2.0 * goertzel_power(pcm, coeff) / (n * energy);
            if best.is_none_or(|(_, b)| fraction > b) {
                best = Some((i, fraction));
            }
        }
        best.filter(|&(_, fraction)| fraction >= MIN_ENERGY_FRACTION)
            .map(|(i, _)| i)
    }
}

/// Squared magnitude of the DFT of `pcm` at the frequency of `coeff`.
fn goertzel_power(pcm: &[i16], coeff: f64) -> f64 {
    let (mut s1, mut s2) = (0.0_f64, 0.0_f64);
    for &x in pcm {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Decodes one received stream (e.g. one listener slot) and reports which
/// tone each frame carries.
///
/// After a switch of source on the stream, the first frame or two may be
/// transitional (see the [module docs](self)).
#[derive(Debug)]
pub struct ToneListener {
    decoder: opus::Decoder,
    detector: ToneDetector,
    /// Reused decode buffer, large enough for the longest Opus packet.
    pcm: Vec<i16>,
    /// Samples of the last decoded or concealed frame in `pcm`.
    last_len: usize,
    decoded: u64,
    errors: u64,
}

impl ToneListener {
    /// A listener with a fresh 48 kHz mono decoder, detecting `freqs`.
    ///
    /// # Panics
    /// Only if libopus fails to create a decoder.
    pub fn new(freqs: &[f32]) -> Self {
        Self {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
                .expect("create Opus decoder"),
            detector: ToneDetector::new(freqs),
            pcm: vec![0; MAX_FRAME_SAMPLES],
            last_len: 0,
            decoded: 0,
            errors: 0,
        }
    }

    /// Decode one Opus payload; `Ok(Some(i))` tone index heard, `Ok(None)`
    /// silence/unknown, `Err` if the decoder rejected the packet.
    ///
    /// An empty payload is not a packet: it is treated as one lost frame
    /// (concealed as by [`conceal`](Self::conceal)`(1)`) and gives `Ok(None)`.
    pub fn decode(&mut self, payload: &[u8]) -> Result<Option<usize>, opus::Error> {
        if payload.is_empty() {
            self.conceal(1);
            return Ok(None);
        }
        match self.decoder.decode(payload, &mut self.pcm, false) {
            Ok(n) => {
                self.decoded += 1;
                self.last_len = n.min(self.pcm.len());
                Ok(self.detector.detect(&self.pcm[..self.last_len]))
            }
            Err(e) => {
                self.errors += 1;
                self.last_len = 0;
                Err(e)
            }
        }
    }

    /// Conceal `frames` lost 20 ms frames (decode with empty input, FEC off)
    /// so the decoder state stays honest. Not counted in
    /// [`decoded`](Self::decoded) nor [`errors`](Self::errors).
    pub fn conceal(&mut self, frames: usize) {
        for _ in 0..frames {
            self.last_len = self
                .decoder
                .decode(&[], &mut self.pcm[..FRAME_SAMPLES], false)
                .map_or(0, |n| n.min(FRAME_SAMPLES));
        }
    }

    /// PCM of the last decoded (or concealed) frame; empty after an error.
    pub fn last_pcm(&self) -> &[i16] {
        &self.pcm[..self.last_len]
    }

    /// Number of frames decoded without error so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Number of decode errors so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tones_are_in_range_and_not_harmonics() {
        for (i, &a) in TONES.iter().enumerate() {
            assert!((300.0..=2600.0).contains(&a));
            for &b in &TONES[i + 1..] {
                assert!(b - a >= 200.0, "{a} and {b} too close");
                assert_ne!(b % a, 0.0, "{b} is a harmonic of {a}");
            }
        }
    }

    #[test]
    fn every_tone_round_trips() {
        for (i, &freq) in TONES.iter().enumerate() {
            for amplitude in [0.5, 0.05] {
                let mut speaker = ToneSpeaker::new(freq, amplitude);
                let mut listener = ToneListener::new(&TONES);
                for frame in 0..50 {
                    let encoded = speaker.next_frame();
                    assert!(encoded.voiced);
                    let heard = listener.decode(&encoded.payload).unwrap();
                    if frame >= 2 {
                        assert_eq!(
                            heard,
                            Some(i),
                            "tone {freq} Hz amplitude {amplitude} frame {frame}"
                        );
                    }
                }
                assert_eq!(listener.decoded(), 50);
                assert_eq!(listener.errors(), 0);
            }
        }
    }

    #[test]
    fn raw_pcm_detection() {
        let detector = ToneDetector::new(&TONES);
        for (i, &freq) in TONES.iter().enumerate() {
            let pcm: Vec<i16> = (0..FRAME_SAMPLES)
                .map(|t| {
                    let phase = std::f64::consts::TAU * f64::from(freq) * t as f64 / 48_000.0;
                    (8000.0 * (phase + 0.3).sin()) as i16
                })
                .collect();
            assert_eq!(detector.detect(&pcm), Some(i));
        }
        // A tone that is not a candidate, and white noise, are unknown.
        let pcm: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|t| (8000.0 * (std::f64::consts::TAU * 1000.0 * t as f64 / 48_000.0).sin()) as i16)
            .collect();
        assert_eq!(detector.detect(&pcm), None);
        let mut rng = SplitMix64::new(7);
        let noise: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|_| rng.next_u64() as i16 / 4)
            .collect();
        assert_eq!(detector.detect(&noise), None);
        assert_eq!(detector.detect(&[]), None);
        assert_eq!(detector.detect(&[0; FRAME_SAMPLES]), None);
    }

    #[test]
    fn silence_is_none_and_unvoiced() {
        let mut speaker = ToneSpeaker::new(TONES[2], 0.0);
        let mut listener = ToneListener::new(&TONES);
        for _ in 0..20 {
            let encoded = speaker.next_frame();
            assert!(!encoded.voiced);
            assert_eq!(encoded.level, 127);
            assert_eq!(listener.decode(&encoded.payload).unwrap(), None);
        }
    }

    #[test]
    fn talk_pause_and_resume() {
        let mut speaker = ToneSpeaker::new(TONES[5], 0.3);
        let mut listener = ToneListener::new(&TONES);
        let mut heard = Vec::new();
        for frame in 0..60 {
            if frame == 20 {
                speaker.set_amplitude(0.0);
            }
            if frame == 40 {
                speaker.set_amplitude(0.3);
            }
            let encoded = speaker.next_frame();
            assert_eq!(encoded.voiced, !(20..40).contains(&frame));
            heard.push(listener.decode(&encoded.payload).unwrap());
        }
        assert!(heard[2..20].iter().all(|&h| h == Some(5)));
        assert!(heard[23..40].iter().all(|&h| h.is_none()), "{heard:?}");
        assert!(heard[42..].iter().all(|&h| h == Some(5)));
    }

    #[test]
    fn switch_of_source_is_detected_within_two_frames() {
        let mut one = ToneSpeaker::new(TONES[1], 0.3);
        let mut four = ToneSpeaker::new(TONES[4], 0.3);
        let mut listener = ToneListener::new(&TONES);
        for frame in 0..20 {
            let heard = listener.decode(&one.next_frame().payload).unwrap();
            // The other speaker talks meanwhile; its frames are not forwarded.
            let _ = four.next_frame();
            if frame >= 2 {
                assert_eq!(heard, Some(1));
            }
        }
        for frame in 0..20 {
            let heard = listener.decode(&four.next_frame().payload).unwrap();
            let _ = one.next_frame();
            if frame >= 2 {
                assert_eq!(heard, Some(4), "frame {frame} after the switch");
            } else {
                assert!(matches!(heard, Some(1) | Some(4) | None));
            }
        }
    }

    #[test]
    fn concealment_then_recovery() {
        let mut speaker = ToneSpeaker::new(TONES[3], 0.3);
        let mut listener = ToneListener::new(&TONES);
        for _ in 0..10 {
            listener.decode(&speaker.next_frame().payload).unwrap();
        }
        for _ in 0..5 {
            let _ = speaker.next_frame();
        }
        listener.conceal(5);
        assert_eq!(listener.last_pcm().len(), FRAME_SAMPLES);
        // An empty payload conceals one frame too.
        assert_eq!(listener.decode(&[]).unwrap(), None);
        let _ = speaker.next_frame();
        for frame in 0..10 {
            let heard = listener.decode(&speaker.next_frame().payload).unwrap();
            if frame >= 2 {
                assert_eq!(heard, Some(3));
            }
        }
        assert_eq!(listener.decoded(), 20);
        assert_eq!(listener.errors(), 0);
    }

    #[test]
    fn phase_is_continuous_across_frames() {
        let mut speaker = ToneSpeaker::new(440.0, 1.0);
        let _ = speaker.next_frame();
        let last = speaker.pcm[FRAME_SAMPLES - 1];
        let _ = speaker.next_frame();
        let first = speaker.pcm[0];
        // One sample step of a full-scale 440 Hz sine is at most ~1900.
        assert!((i32::from(first) - i32::from(last)).abs() < 2000);
        assert_eq!(speaker.freq_hz(), 440.0);
        assert_eq!(speaker.amplitude(), 1.0);
        speaker.set_amplitude(2.0);
        assert_eq!(speaker.amplitude(), 1.0);
        speaker.set_amplitude(f32::NAN);
        assert_eq!(speaker.amplitude(), 0.0);
    }

    #[test]
    fn dtx_sends_one_frame_in_twenty_during_silence() {
        let mut speaker = ToneSpeaker::new(TONES[0], 0.5);
        assert!(speaker.set_dtx(true));
        let mut gate = DtxGate::default();
        for _ in 0..50 {
            let f = speaker.next_frame();
            assert!(f.payload.len() > DtxGate::DTX_MAX_BYTES);
            assert!(gate.should_send(f.payload.len()));
        }
        speaker.set_amplitude(0.0);
        let mut sent = Vec::new();
        let mut lens = Vec::new();
        for i in 0..250 {
            let f = speaker.next_frame();
            assert_eq!(f.level, 127);
            assert!(!f.voiced);
            lens.push(f.payload.len());
            if gate.should_send(f.payload.len()) {
                sent.push(i);
            }
        }
        // Hangover (about 200 ms of real frames), then one DTX frame; then
        // libopus codes a real frame about every 400 ms, and the DTX frame
        // after it is sent too (it is the first after a real frame).
        let first_dtx = lens.iter().position(|&l| l <= DtxGate::DTX_MAX_BYTES);
        let first_dtx = first_dtx.unwrap_or_else(|| panic!("no DTX frame: {lens:?}"));
        assert!(first_dtx <= 20, "{lens:?}");
        assert_eq!(sent[..=first_dtx], (0..=first_dtx).collect::<Vec<_>>());
        let real: Vec<usize> = sent
            .iter()
            .copied()
            .filter(|&i| i > first_dtx && lens[i] > DtxGate::DTX_MAX_BYTES)
            .collect();
        assert!(real.len() >= 8, "{sent:?} {lens:?}");
        for w in real.windows(2) {
            assert!((18..=22).contains(&(w[1] - w[0])), "{sent:?} {lens:?}");
        }
        let dtx_sent = sent.len() - (first_dtx + 1) - real.len();
        assert!(dtx_sent <= real.len() + 1, "{sent:?} {lens:?}");
        assert!(gate.in_dtx() || lens[249] > DtxGate::DTX_MAX_BYTES);
        // Talking again: every frame is real and sent.
        speaker.set_amplitude(0.5);
        let mut listener = ToneListener::new(&TONES);
        for i in 0..10 {
            let f = speaker.next_frame();
            assert!(gate.should_send(f.payload.len()));
            let heard = listener.decode(&f.payload).unwrap();
            if i >= 2 {
                assert_eq!(heard, Some(0));
            }
        }
    }

    #[test]
    fn conversation_schedule_is_seeded_and_has_the_right_means() {
        let frames = |seed| {
            let mut s = TalkSchedule::new(TalkPattern::conversation(seed));
            (0..100_000).map(|_| s.next_frame()).collect::<Vec<bool>>()
        };
        let a = frames(7);
        assert_eq!(a, frames(7));
        assert_ne!(a, frames(8));
        // Runs of talk and pause, in frames (the first and last cut off).
        let mut runs: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let mut start = 0;
        for i in 1..a.len() {
            if a[i] != a[i - 1] {
                if start > 0 {
                    runs[usize::from(a[i - 1])].push(i - start);
                }
                start = i;
            }
        }
        let mean = |v: &Vec<usize>| v.iter().sum::<usize>() as f64 / v.len() as f64 * 20.0;
        let (pause, talk) = (mean(&runs[0]), mean(&runs[1]));
        assert!((900.0..1100.0).contains(&talk), "talk spurts {talk} ms");
        assert!((1350.0..1650.0).contains(&pause), "pauses {pause} ms");
        let share = a.iter().filter(|&&t| t).count() as f64 / a.len() as f64;
        assert!((0.35..0.45).contains(&share), "talking {share}");
        let mut c = TalkSchedule::new(TalkPattern::Continuous);
        assert!((0..1000).all(|_| c.next_frame()));
        // Degenerate means never panic nor stall.
        let mut z = TalkSchedule::new(TalkPattern::Conversation {
            seed: 1,
            spurt_mean_ms: 0,
            pause_mean_ms: u32::MAX,
        });
        for _ in 0..10_000 {
            let _ = z.next_frame();
        }
    }

    #[test]
    fn dtx_gate_follows_webrtc() {
        let mut g = DtxGate::default();
        assert!(g.should_send(80));
        assert!(g.should_send(1));
        assert!(!g.should_send(1));
        assert!(!g.should_send(2));
        assert!(g.should_send(40));
        assert!(!g.in_dtx());
        assert!(g.should_send(0));
        assert!(g.in_dtx());
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut listener = ToneListener::new(&TONES);
        let mut rng = SplitMix64::new(0xDEAD_BEEF_CAFE_F00D);
        let mut buf = vec![0u8; 1500];
        let mut errors = 0;
        for i in 0..3000 {
            let len = if i % 3 == 0 {
                (rng.next_u64() % 8) as usize
            } else {
                (rng.next_u64() % 1500) as usize
            };
            for b in &mut buf[..len] {
                *b = rng.next_u64() as u8;
            }
            match listener.decode(&buf[..len]) {
                Ok(Some(t)) => assert!(t < TONES.len()),
                Ok(None) => {}
                Err(_) => errors += 1,
            }
        }
        assert_eq!(listener.errors(), errors);
        assert!(errors > 0);
        // Still decodes real packets afterwards.
        let mut speaker = ToneSpeaker::new(TONES[0], 0.3);
        let mut last = None;
        for _ in 0..6 {
            last = listener.decode(&speaker.next_frame().payload).unwrap();
        }
        assert_eq!(last, Some(0));
    }
}
