//! The SDP answer as clients get it: str0m's answer, with the ICE candidates
//! in every bundled m-section.
//!
//! str0m writes the candidates only into the first m-section of the BUNDLE
//! group (JSEP allows that: the others share its transport). Some stacks
//! read them per m-section instead: aiortc 1.16 keeps the candidates of the
//! *last* bundled section it parses, so a WHEP offer with three recvonly
//! m-lines got an answer whose last section had none, and it never started
//! ICE. Browsers accept the same candidates repeated in every bundled
//! section (JSEP §5.3.1 puts them there for a bundled answer too). The
//! engine never trickles, so each such section also says
//! `a=end-of-candidates` (RFC 8840 §8.2).

/// `sdp` (an answer str0m wrote) with the candidate lines of its first
/// bundled m-section, and `a=end-of-candidates`, in every bundled m-section
/// that has none. Sections outside the BUNDLE group (rejected m-lines) and
/// anything that does not look like str0m's output are left as they are.
pub(crate) fn with_candidates_in_every_section(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.split_inclusive('\n').collect();
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    // Session part, then one range of lines per m-section.
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("m="))
        .map(|(i, _)| i)
        .collect();
    let Some(&first_media) = starts.first() else {
        return sdp.to_string();
    };
    let bundle: Vec<&str> = lines[..first_media]
        .iter()
        .find_map(|l| l.trim_end().strip_prefix("a=group:BUNDLE"))
        .map(|mids| mids.split_whitespace().collect())
        .unwrap_or_default();
    let sections: Vec<&[&str]> = starts
        .iter()
        .enumerate()
        .map(|(n, &s)| &lines[s..starts.get(n + 1).copied().unwrap_or(lines.len())])
        .collect();
    let bundled = |section: &[&str]| {
        section.iter().any(|l| {
            l.trim_end()
                .strip_prefix("a=mid:")
                .is_some_and(|mid| bundle.contains(&mid))
        })
    };
    let candidates: Vec<&str> = sections
        .iter()
        .filter(|s| bundled(s))
        .flat_map(|s| s.iter())
        .filter(|l| l.starts_with("a=candidate:"))
        .copied()
        .collect();
    if candidates.is_empty() {
        return sdp.to_string();
    }

    let mut out = String::with_capacity(sdp.len() + sections.len() * 128);
    for l in &lines[..first_media] {
        out.push_str(l);
    }
    for section in sections {
        for l in section {
            out.push_str(l);
        }
        if !bundled(section) {
            continue;
        }
        if !section.iter().any(|l| l.starts_with("a=candidate:")) {
            for c in &candidates {
                out.push_str(c);
            }
        }
        if !section.iter().any(|l| l.starts_with("a=end-of-candidates")) {
            out.push_str("a=end-of-candidates");
            out.push_str(eol);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use str0m::change::{SdpAnswer, SdpOffer};
    use str0m::media::{Direction, MediaKind};
    use str0m::{Candidate, Rtc};

    use super::*;

    /// The m-sections of an SDP (each from its `m=` line on).
    fn sections(sdp: &str) -> Vec<&str> {
        sdp.split("\r\nm=").skip(1).collect()
    }

    /// An answer from an ICE-lite str0m peer to an offer with `recvonly`
    /// audio m-lines and, when `video`, a video m-line it rejects.
    fn answer(recvonly: usize, video: bool) -> String {
        let now = testkit::epoch();
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut client = Rtc::builder().set_rtp_mode(true).build(now);
        let mut api = client.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        for _ in 0..recvonly {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        if video {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        }
        let (offer, _) = api.apply().unwrap();
        let mut server = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        server.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        server
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap())
            .unwrap()
            .to_sdp_string()
    }

    #[test]
    fn every_bundled_section_gets_the_candidates() {
        let before = answer(3, false);
        // What str0m does today (and why this module exists).
        let with = |sdp: &str| {
            sections(sdp)
                .iter()
                .map(|s| s.contains("a=candidate:"))
                .collect::<Vec<_>>()
        };
        assert_eq!(with(&before), [true, false, false, false], "{before}");

        let after = with_candidates_in_every_section(&before);
        assert_eq!(with(&after), [true; 4], "{after}");
        for s in sections(&after) {
            assert_eq!(s.matches("a=candidate:").count(), 1, "{s}");
            assert_eq!(s.matches("a=end-of-candidates").count(), 1, "{s}");
        }
        // Nothing else changed: taking the added lines out gives str0m's answer.
        let stripped: String = after
            .split_inclusive("\r\n")
            .enumerate()
            .filter(|(_, l)| !l.starts_with("a=end-of-candidates"))
            .filter(|(_, l)| !l.starts_with("a=candidate:"))
            .map(|(_, l)| l)
            .collect();
        let original: String = before
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("a=candidate:"))
            .collect();
        assert_eq!(stripped, original);
        // Idempotent.
        assert_eq!(with_candidates_in_every_section(&after), after);
    }

    #[test]
    fn the_answer_parses_back_with_the_candidate_in_every_section() {
        let after = with_candidates_in_every_section(&answer(3, false));
        let parsed = SdpAnswer::from_sdp_string(&after).expect("parses");
        // str0m's own reading keeps the BUNDLE group of all four sections.
        let text = parsed.to_sdp_string();
        let group = text.lines().find_map(|l| l.strip_prefix("a=group:BUNDLE "));
        assert_eq!(group.map(|g| g.split(' ').count()), Some(4), "{text}");
        let client_view = sections(&after);
        assert_eq!(client_view.len(), 4);
        let candidate = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("a=candidate:"))
                .map(str::to_string)
        };
        let first = candidate(client_view[0]).unwrap();
        assert!(first.contains("127.0.0.1 5000 typ host"), "{first}");
        for s in &client_view {
            assert_eq!(candidate(s).as_deref(), Some(first.as_str()));
        }
    }

    #[test]
    fn a_rejected_section_outside_the_bundle_is_left_alone() {
        let before = answer(1, true);
        let after = with_candidates_in_every_section(&before);
        let s = sections(&after);
        assert_eq!(s.len(), 3, "{after}");
        assert!(s[2].starts_with("video 0 "), "{after}");
        assert!(!s[2].contains("a=candidate:"), "{after}");
        assert!(s[0].contains("a=candidate:") && s[1].contains("a=candidate:"));
        SdpAnswer::from_sdp_string(&after).expect("parses");
    }

    #[test]
    fn sdp_without_media_or_candidates_is_unchanged() {
        for sdp in [
            "",
            "v=0\r\n",
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n",
        ] {
            assert_eq!(with_candidates_in_every_section(sdp), sdp);
        }
    }
}
