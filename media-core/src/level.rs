//! RFC 6464 audio levels.
//!
//! The `ssrc-audio-level` header extension carries the level of a packet as
//! `0..=127`, the negated loudness in dBov (0 = 0 dBov, the loudest; 127 =
//! -127 dBov or quieter, i.e. silence). When a client sends the extension the
//! engine uses it; when it does not, the engine decodes the Opus payload with
//! an [`OpusLevelMeter`] and measures the level itself.

/// Largest Opus frame: 120 ms at 48 kHz, per channel.
const MAX_FRAME_SAMPLES: usize = 5760;

/// Level reported for silence (and anything quieter than -127 dBov).
const SILENCE_LEVEL: u8 = 127;

/// RFC 6464 level of 16-bit PCM: 0 = 0 dBov (loudest) .. 127 = -127 dBov or
/// quieter (silence).
///
/// Follows RFC 6464 §3: the level is the RMS of the samples expressed in dBov,
/// where 0 dBov is the RMS of a full-scale square wave (i.e. 32768), negated
/// and rounded to the nearest integer (as WebRTC does), then clamped to
/// `0..=127`. A full-scale sine therefore measures 3, a full-scale square
/// wave 0. An empty slice is silence (127).
pub fn level_from_pcm(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return SILENCE_LEVEL;
    }
    // Each square is at most 2^30, so a u64 sum cannot overflow for any slice
    // shorter than 2^34 samples.
    let sum_sq: u64 = pcm
        .iter()
        .map(|&s| {
            let s = i64::from(s);
            (s * s) as u64
        })
        .sum();
    if sum_sq == 0 {
        return SILENCE_LEVEL;
    }
    const FULL_SCALE: f64 = 32768.0;
    let mean_sq = sum_sq as f64 / pcm.len() as f64 / (FULL_SCALE * FULL_SCALE);
    let dbov = 10.0 * mean_sq.log10(); // <= ~0
    let level = (-dbov + 0.5).floor();
    if level <= 0.0 {
        0
    } else if level >= f64::from(SILENCE_LEVEL) {
        SILENCE_LEVEL
    } else {
        level as u8
    }
}

/// Decodes Opus packets of one voice (48 kHz, mono) to measure their level.
///
/// One meter per voice: the Opus decoder is stateful, so packets of different
/// voices must not share a meter. The first frame or two after the meter
/// starts (or after loss) may measure a little quieter than the sender's
/// input while the decoder settles.
#[derive(Debug)]
pub(crate) struct OpusLevelMeter {
    decoder: opus::Decoder,
    /// Reused decode buffer, large enough for the longest Opus packet
    /// (120 ms at 48 kHz; stereo packets are downmixed by the mono decoder).
    pcm: Vec<i16>,
}

impl OpusLevelMeter {
    /// A meter with a fresh 48 kHz mono decoder.
    pub(crate) fn new() -> Result<Self, opus::Error> {
        Ok(Self {
            decoder: opus::Decoder::new(48_000, opus::Channels::Mono)?,
            pcm: vec![0; MAX_FRAME_SAMPLES],
        })
    }

    /// Level of one Opus packet; `None` when the payload does not decode.
    ///
    /// Never panics, whatever the bytes. An empty payload is not a packet
    /// (decoding it would run packet-loss concealment) and gives `None`.
    /// Does not allocate.
    pub(crate) fn measure(&mut self, payload: &[u8]) -> Option<u8> {
        if payload.is_empty() {
            return None;
        }
        let n = self.decoder.decode(payload, &mut self.pcm, false).ok()?;
        let pcm = self.pcm.get(..n)?;
        Some(level_from_pcm(pcm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(amplitude: f64, freq: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|i| {
                let t = i as f64 / 48_000.0;
                (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
            })
            .collect()
    }

    #[test]
    fn full_scale_square_is_zero() {
        let pcm: Vec<i16> = (0..960)
            .map(|i| {
                if (i / 24) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        assert_eq!(level_from_pcm(&pcm), 0);
        let pcm: Vec<i16> = (0..960)
            .map(|i| {
                if (i / 24) % 2 == 0 {
                    i16::MAX
                } else {
                    -i16::MAX
                }
            })
            .collect();
        assert_eq!(level_from_pcm(&pcm), 0);
    }

    #[test]
    fn full_scale_sine_is_three() {
        // 1 kHz over 960 samples: exactly 20 periods.
        assert_eq!(level_from_pcm(&sine(32767.0, 1000.0, 960)), 3);
    }

    #[test]
    fn sine_is_three_db_below_its_peak() {
        for peak_dbfs in [-6.0_f64, -10.0, -20.0, -33.0, -50.0] {
            let amplitude = 32768.0 * 10f64.powf(peak_dbfs / 20.0);
            let level = level_from_pcm(&sine(amplitude, 440.0, 4800));
            let expected = (-peak_dbfs + 3.0).round() as i32;
            assert!(
                (i32::from(level) - expected).abs() <= 1,
                "peak {peak_dbfs} dBFS: level {level}, expected {expected}"
            );
        }
    }

    #[test]
    fn minus_forty_dbov_tone() {
        // RMS of -40 dBov: 32768 * 10^(-40/20); a sine's peak is sqrt(2) x RMS.
        let amplitude = 32768.0 * 0.01 * std::f64::consts::SQRT_2;
        let level = level_from_pcm(&sine(amplitude, 1000.0, 960));
        assert!((39..=41).contains(&level), "level {level}");
    }

    #[test]
    fn silence_and_empty_are_127() {
        assert_eq!(level_from_pcm(&[]), 127);
        assert_eq!(level_from_pcm(&[0; 960]), 127);
        // Far below -127 dBov is clamped to 127; one LSB in 960 is ~-120 dBov.
        let mut pcm = vec![0i16; 960];
        pcm[0] = 1;
        assert_eq!(level_from_pcm(&pcm), 120);
    }

    #[test]
    fn opus_meter_matches_input_level() {
        for (amplitude, freq) in [
            (32767.0 * 0.5, 440.0),
            (32767.0 * 0.1, 1000.0),
            (32767.0 * 0.9, 700.0),
            (32768.0 * 0.01 * std::f64::consts::SQRT_2, 550.0),
        ] {
            let mut encoder =
                opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
            let mut meter = OpusLevelMeter::new().unwrap();
            let pcm = sine(amplitude, freq, 960 * 20);
            let mut out = [0u8; 4000];
            for (i, frame) in pcm.chunks_exact(960).enumerate() {
                let n = encoder.encode(frame, &mut out).unwrap();
                let measured = meter.measure(&out[..n]).expect("decodes");
                if i < 2 {
                    continue;
                }
                let input = level_from_pcm(frame);
                assert!(
                    (i32::from(measured) - i32::from(input)).abs() <= 3,
                    "amp {amplitude} frame {i}: measured {measured}, input {input}"
                );
            }
        }
    }

    #[test]
    fn opus_meter_silence_is_quiet() {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut meter = OpusLevelMeter::new().unwrap();
        let mut out = [0u8; 4000];
        // The decoded output of digital silence is not all zeros, but it
        // stays around -96 dBov, far below any voiced level.
        for _ in 0..10 {
            let n = encoder.encode(&[0; 960], &mut out).unwrap();
            let level = meter.measure(&out[..n]).expect("decodes");
            assert!(level > 80, "level {level}");
        }
    }

    #[test]
    fn opus_meter_never_panics() {
        let mut meter = OpusLevelMeter::new().unwrap();
        assert_eq!(meter.measure(&[]), None);

        // Truncations of a valid packet.
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut out = [0u8; 4000];
        let n = encoder
            .encode(&sine(10_000.0, 440.0, 960), &mut out)
            .unwrap();
        for len in 0..=n {
            let _ = meter.measure(&out[..len]);
        }

        // Pseudo-random garbage of many lengths (including longer than any
        // real packet).
        let mut rng = crate::rng::Rng::from_seed([0x5e; 32]);
        let mut buf = vec![0u8; 1500];
        for i in 0..4000 {
            let len = match i % 4 {
                0 => (rng.next_u32() % 8) as usize,
                1 => (rng.next_u32() % 200) as usize,
                _ => (rng.next_u32() % 1500) as usize,
            };
            for b in &mut buf[..len] {
                *b = rng.next_u32() as u8;
            }
            if let Some(level) = meter.measure(&buf[..len]) {
                assert!(level <= 127);
            }
        }
        // The meter still works after all that garbage.
        let mut measured = None;
        for _ in 0..4 {
            let n = encoder
                .encode(&sine(10_000.0, 440.0, 960), &mut out)
                .unwrap();
            measured = meter.measure(&out[..n]);
        }
        assert!(measured.is_some());
    }
}
