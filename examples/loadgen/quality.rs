//! Call quality from the measured figures: the simplified E-model of ITU-T
//! G.107 and its mapping to a MOS estimate; percentiles.

/// R0 − Is with G.107's default values (the best R a narrowband
/// connection gets).
const R_DEFAULT: f64 = 93.2;

/// Equipment impairment factor of the codec. G.113 tabulates no Opus
/// value; 0 takes Opus at 20 ms (a wideband codec) as no worse than G.711
/// on the narrowband scale.
pub(crate) const IE_OPUS: f64 = 0.0;

/// Packet-loss robustness factor. G.113 Appendix I gives 4.3 for G.711
/// without and 25.1 with packet loss concealment; 10 is an assumption for
/// Opus with its concealment (no tabulated value), conservative against
/// the G.711-with-PLC figure.
pub(crate) const BPL_OPUS: f64 = 10.0;

/// One codec frame (20 ms Opus): the packetization delay a sender adds
/// before the first sample of a frame can leave.
pub(crate) const FRAME_MS: f64 = 20.0;

/// The inputs and result of one E-model estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Mos {
    /// Effective one-way mouth-to-ear delay in ms (see [`estimate`]).
    pub(crate) delay_ms: f64,
    /// Packet loss in percent.
    pub(crate) loss_percent: f64,
    /// Delay impairment Id.
    pub(crate) id: f64,
    /// Effective equipment impairment Ie,eff.
    pub(crate) ie_eff: f64,
    /// Transmission rating R.
    pub(crate) r: f64,
    /// MOS (conversational quality, estimated), 1..=4.5.
    pub(crate) mos: f64,
}

/// The E-model estimate for a one-way network latency `latency_ms`,
/// interarrival jitter `jitter_ms` and packet loss `loss` (0..=1):
///
/// - effective delay d = latency + 2 × jitter (a jitter buffer of twice the
///   jitter) + 20 ms (one Opus frame of packetization);
/// - Id = 0.024 d + 0.11 (d − 177.3) H(d − 177.3), the usual fit of G.107's
///   delay impairment for a connection without echo (Cole & Rosenbluth,
///   "Voice over IP performance monitoring", ACM CCR 2001);
/// - Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl + Bpl), G.107 §7.3 for random
///   loss (BurstR = 1), Ppl in percent, with [`IE_OPUS`] and [`BPL_OPUS`];
/// - R = 93.2 − Id − Ie,eff (A = 0);
/// - MOS = 1 + 0.035 R + 7·10⁻⁶ R (R − 60)(100 − R), 1 below R = 0 (and
///   where the polynomial dips under 1, R < 6.5) and 4.5 above R = 100
///   (G.107 Annex B).
///
/// Non-finite or negative inputs count as 0 (loss is clamped to 0..=1).
pub(crate) fn estimate(latency_ms: f64, jitter_ms: f64, loss: f64) -> Mos {
    let sane = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    let d = sane(latency_ms) + 2.0 * sane(jitter_ms) + FRAME_MS;
    let ppl = sane(loss).min(1.0) * 100.0;
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ie_eff = IE_OPUS + (95.0 - IE_OPUS) * ppl / (ppl + BPL_OPUS);
    let r = R_DEFAULT - id - ie_eff;
    Mos {
        delay_ms: d,
        loss_percent: ppl,
        id,
        ie_eff,
        r,
        mos: mos_from_r(r),
    }
}

/// G.107 Annex B: R to MOS (conversational, estimated).
pub(crate) fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        // The polynomial dips just below 1 for R under about 6.5.
        (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).max(1.0)
    }
}

/// The `p` quantile (0..=1, nearest rank) of sorted values; `None` when
/// empty.
pub(crate) fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    sorted
        .get(((sorted.len() - 1) as f64 * p).round() as usize)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_to_mos_matches_g107_annex_b() {
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
        // Known points of the curve: R 93.2 → 4.41, R 80 → 4.02,
        // R 70 → 3.60, R 50 → 2.58.
        for (r, mos) in [(93.2, 4.409), (80.0, 4.024), (70.0, 3.597), (50.0, 2.575)] {
            assert!(
                (mos_from_r(r) - mos).abs() < 0.005,
                "R {r}: {}",
                mos_from_r(r)
            );
        }
    }

    #[test]
    fn delay_and_loss_lower_the_estimate() {
        let clean = estimate(1.0, 0.5, 0.0);
        assert!((clean.delay_ms - 22.0).abs() < 1e-9);
        assert!((clean.id - 0.528).abs() < 1e-9);
        assert_eq!(clean.ie_eff, 0.0);
        assert!(clean.mos > 4.35 && clean.mos < 4.41, "{clean:?}");
        // 1% random loss with Bpl 10: Ie,eff = 95 / 11.
        let lossy = estimate(1.0, 0.5, 0.01);
        assert!((lossy.ie_eff - 95.0 / 11.0).abs() < 1e-9);
        assert!(lossy.mos < clean.mos);
        // Past 177.3 ms the delay impairment steepens.
        let far = estimate(300.0, 10.0, 0.0);
        assert!((far.delay_ms - 340.0).abs() < 1e-9);
        assert!((far.id - (0.024 * 340.0 + 0.11 * (340.0 - 177.3))).abs() < 1e-9);
        assert!(far.mos < 4.0);
        // Nonsense in, a defined answer out.
        let odd = estimate(f64::NAN, -3.0, 7.0);
        assert_eq!(odd.loss_percent, 100.0);
        assert!(odd.mos >= 1.0);
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile::<u32>(&[], 0.5), None);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.95), Some(95));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, f64::NAN), Some(1));
    }
}
