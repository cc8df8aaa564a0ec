//! ICE restarts as signaling sees them: how often one member may restart
//! ([`RestartBudget`]), and WHIP/WHEP's `PATCH` (RFC 9725 §4.3), whose
//! `application/trickle-ice-sdpfrag` body ([`SdpFrag`]) carries the
//! client's new ICE credentials instead of a whole offer: the session's
//! last offer with those credentials swapped in is what the engine gets
//! ([`restart_offer`]), and the fragment the client gets back holds the
//! engine's new credentials and candidates ([`answer_frag`]).
//!
//! Pure (no clock: `now` comes in), so that the fuzz target and the unit
//! tests feed it anything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The media type of a `PATCH` body (RFC 8840).
pub const SDPFRAG_TYPE: &str = "application/trickle-ice-sdpfrag";

/// The window a [`RestartBudget`] counts in.
const WINDOW: Duration = Duration::from_secs(60);

/// ICE restarts of one member in the last minute: at most `per_minute`
/// (0: no limit). A client whose network flaps cannot make the engine
/// renegotiate without end.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    per_minute: u32,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// A budget of `per_minute` restarts (0: no limit).
    pub fn new(per_minute: u32) -> RestartBudget {
        RestartBudget {
            per_minute,
            recent: VecDeque::new(),
        }
    }

    /// Takes one restart at `now`, or says how long to wait for the next.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.per_minute as usize {
            let oldest = self.recent.front().copied().unwrap_or(now);
            return Err(WINDOW.saturating_sub(now.saturating_duration_since(oldest)));
        }
        self.recent.push_back(now);
        Ok(())
    }
}

/// A `PATCH` body: the ICE lines of an SDP fragment (RFC 8840 §9).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// `a=ice-ufrag` (with `ice_pwd`: an ICE restart when it differs from
    /// the session's).
    pub ice_ufrag: Option<String>,
    /// `a=ice-pwd`.
    pub ice_pwd: Option<String>,
    /// `a=candidate` lines, as given (an ICE-lite server needs none: it
    /// learns the client's addresses from the client's checks).
    pub candidates: usize,
}

/// Why a `PATCH` body was refused (`400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    /// Not UTF-8 text.
    #[error("the body is not text")]
    NotText,
    /// A line that is not an SDP line (`x=...`).
    #[error("line {0} is not an SDP line")]
    BadLine(usize),
    /// Credentials that are not ICE characters of the allowed lengths
    /// (RFC 8839 §5.4: ufrag 4 to 256, pwd 22 to 256).
    #[error("{0} is not a valid ICE credential")]
    BadCredential(&'static str),
    /// A ufrag without a pwd, or a pwd without a ufrag.
    #[error("an ICE restart needs both ice-ufrag and ice-pwd")]
    HalfCredentials,
    /// The same attribute twice with different values.
    #[error("{0} is given twice")]
    Twice(&'static str),
}

impl SdpFrag {
    /// Parses a fragment. Lines other than ICE attributes (`m=`, `a=mid`,
    /// `a=ice-options`, `a=end-of-candidates`...) are accepted and ignored.
    pub fn parse(body: &[u8]) -> Result<SdpFrag, FragError> {
        let text = std::str::from_utf8(body).map_err(|_| FragError::NotText)?;
        let mut frag = SdpFrag::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let b = line.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(FragError::BadLine(i + 1));
            }
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                set_once(&mut frag.ice_ufrag, v, "ice-ufrag", 4)?;
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                set_once(&mut frag.ice_pwd, v, "ice-pwd", 22)?;
            } else if line.starts_with("a=candidate:") {
                frag.candidates += 1;
            }
        }
        if frag.ice_ufrag.is_some() != frag.ice_pwd.is_some() {
            return Err(FragError::HalfCredentials);
        }
        Ok(frag)
    }

    /// The new credentials when the fragment restarts ICE (they differ from
    /// the session's `current` ufrag).
    pub fn restart(&self, current: &str) -> Option<(&str, &str)> {
        match (&self.ice_ufrag, &self.ice_pwd) {
            (Some(u), Some(p)) if u != current => Some((u, p)),
            _ => None,
        }
    }
}

fn set_once(
    slot: &mut Option<String>,
    value: &str,
    name: &'static str,
    min: usize,
) -> Result<(), FragError> {
    let ice_chars = value
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/');
    if !(min..=256).contains(&value.len()) || !ice_chars {
        return Err(FragError::BadCredential(name));
    }
    match slot {
        Some(v) if v != value => Err(FragError::Twice(name)),
        _ => {
            *slot = Some(value.to_owned());
            Ok(())
        }
    }
}

/// The ICE ufrag of an SDP (the first `a=ice-ufrag`).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
}

/// `offer` (the session's last offer) with its ICE credentials replaced by
/// `ufrag`/`pwd` and its candidates removed: the offer a client restarting
/// ICE would have made, for the engine. Everything else (m-lines, codecs,
/// DTLS fingerprint) stays: RFC 9725 §4.3.2 has both sides keep the
/// non-ICE parts of the session.
pub fn restart_offer(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    for line in offer.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// The fragment answering an ICE restart (RFC 9725 §4.3.2): the engine's
/// new credentials from its `answer`, and the first m-section (the bundle's
/// tagged one) with its `mid` and candidates.
pub fn answer_frag(answer: &str) -> String {
    let mut head = String::new();
    let mut media = String::new();
    let mut sections = 0;
    for line in answer.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            sections += 1;
            if sections == 1 {
                media.push_str(line);
                media.push_str("\r\n");
            }
            continue;
        }
        let keep_in_head = line == "a=ice-lite"
            || line.starts_with("a=ice-ufrag:")
            || line.starts_with("a=ice-pwd:")
            || line.starts_with("a=group:BUNDLE");
        if keep_in_head {
            // Session or media level: the first of each goes to the head.
            let key = line.split(':').next().unwrap_or(line);
            if !head.lines().any(|h| h.split(':').next() == Some(key)) {
                head.push_str(line);
                head.push_str("\r\n");
            }
        } else if sections == 1
            && (line.starts_with("a=mid:")
                || line.starts_with("a=candidate:")
                || line == "a=end-of-candidates")
        {
            media.push_str(line);
            media.push_str("\r\n");
        }
    }
    head + &media
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_rate_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = RestartBudget::new(2);
        assert_eq!(b.take(t0), Ok(()));
        assert_eq!(b.take(t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            b.take(t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        // The first restart leaves the window: one more fits.
        assert_eq!(b.take(t0 + Duration::from_secs(60)), Ok(()));
        assert!(b.take(t0 + Duration::from_secs(61)).is_err());
        let mut unlimited = RestartBudget::new(0);
        for _ in 0..1000 {
            assert_eq!(unlimited.take(t0), Ok(()));
        }
    }

    const FRAG: &str = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn a_restart_fragment_parses_and_restarts_only_with_new_credentials() {
        let f = SdpFrag::parse(FRAG.as_bytes()).unwrap();
        assert_eq!(f.ice_ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.candidates, 1);
        assert_eq!(
            f.restart("old1"),
            Some(("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1"))
        );
        assert_eq!(f.restart("EsAw"), None, "same ufrag: a trickle");
        let trickle = SdpFrag::parse(b"a=mid:0\r\na=candidate:1 1 udp 1 192.0.2.1 1 typ host\r\n");
        assert_eq!(trickle.unwrap().restart("x"), None);
    }

    #[test]
    fn bad_fragments_are_refused_with_a_reason() {
        let bad: [(&[u8], FragError); 6] = [
            (b"\xff\xfe", FragError::NotText),
            (b"a=mid:0\r\nhello\r\n", FragError::BadLine(2)),
            (b"a=ice-ufrag:ab\r\n", FragError::BadCredential("ice-ufrag")),
            (
                b"a=ice-ufrag:abcd\r\na=ice-pwd:with space but long enough\r\n",
                FragError::BadCredential("ice-pwd"),
            ),
            (b"a=ice-ufrag:abcd\r\n", FragError::HalfCredentials),
            (
                b"a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\n",
                FragError::Twice("ice-ufrag"),
            ),
        ];
        for (body, want) in bad {
            assert_eq!(SdpFrag::parse(body), Err(want), "{body:?}");
        }
    }

    #[test]
    fn the_restart_offer_keeps_the_session_and_swaps_the_credentials() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            a=group:BUNDLE 0 1\r\na=fingerprint:sha-256 AA:BB\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:old1\r\n\
            a=ice-pwd:oldoldoldoldoldoldoldold\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n\
            a=end-of-candidates\r\na=sendonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=ice-ufrag:old1\r\n\
            a=ice-pwd:oldoldoldoldoldoldoldold\r\na=recvonly\r\n";
        let r = restart_offer(offer, "new1", "newnewnewnewnewnewnewnew");
        assert_eq!(r.matches("a=ice-ufrag:new1\r\n").count(), 2);
        assert_eq!(
            r.matches("a=ice-pwd:newnewnewnewnewnewnewnew\r\n").count(),
            2
        );
        assert!(!r.contains("old"));
        assert!(!r.contains("a=candidate") && !r.contains("end-of-candidates"));
        for kept in [
            "a=fingerprint:sha-256 AA:BB",
            "a=mid:1",
            "a=sendonly",
            "a=recvonly",
        ] {
            assert!(r.contains(kept), "{kept}");
        }
        assert_eq!(ice_ufrag(&r), Some("new1"));
    }

    #[test]
    fn the_answer_fragment_has_the_new_credentials_and_the_first_section() {
        let answer = "v=0\r\ns=-\r\na=ice-lite\r\na=group:BUNDLE 0 1\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:srv1\r\n\
            a=ice-pwd:srvsrvsrvsrvsrvsrvsrvsrv\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\na=end-of-candidates\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=ice-ufrag:srv1\r\n\
            a=ice-pwd:srvsrvsrvsrvsrvsrvsrvsrv\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\n";
        let f = answer_frag(answer);
        assert_eq!(
            f,
            "a=ice-lite\r\na=group:BUNDLE 0 1\r\na=ice-ufrag:srv1\r\n\
             a=ice-pwd:srvsrvsrvsrvsrvsrvsrvsrv\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\na=end-of-candidates\r\n"
        );
        let parsed = SdpFrag::parse(f.as_bytes()).unwrap();
        assert_eq!(parsed.ice_ufrag.as_deref(), Some("srv1"));
    }
}
