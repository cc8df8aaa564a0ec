//! Who joins where, with what client: the speakers on the first server, and
//! each step's listeners round-robin over all servers, `--join-parallel` at
//! a time, until too many fail in a row.

use std::time::{Instant, SystemTime};

use futures_util::stream::StreamExt;
use media_core::str0m::config::DtlsCert;

use crate::cli::{Args, Pattern};
use crate::member::{self, Member, Setup};
use crate::progress::Progress;
use testkit::audio::TalkPattern;
use testkit::client::ClientSpec;

/// Joins that may fail in a row before the ramp stops (each may take the
/// join timeout).
const MAX_FAILED_JOINS_IN_A_ROW: usize = 5;

/// What every join shares.
pub(crate) struct Joins<'a> {
    pub(crate) args: &'a Args,
    pub(crate) cert: &'a DtlsCert,
    /// One wall clock for every client, so that latency is exact on it.
    pub(crate) capture_clock: Option<(Instant, SystemTime)>,
}

/// How the listeners' joins went, over all steps.
#[derive(Debug)]
pub(crate) struct JoinTally {
    /// Listeners joined at each server.
    pub(crate) per_url: Vec<usize>,
    pub(crate) failed_in_a_row: usize,
}

impl JoinTally {
    pub(crate) fn new(urls: usize) -> JoinTally {
        JoinTally {
            per_url: vec![0; urls],
            failed_in_a_row: 0,
        }
    }

    /// Too many joins failed in a row to go on.
    pub(crate) fn gave_up(&self) -> bool {
        self.failed_in_a_row >= MAX_FAILED_JOINS_IN_A_ROW
    }
}

impl Joins<'_> {
    /// Joins every speaker, each on a thread of its own, at the first URL.
    pub(crate) async fn speakers(&self) -> Result<Vec<Member>, String> {
        let a = self.args;
        let mut speakers = Vec::new();
        for i in 0..a.speakers {
            let spec = ClientSpec {
                talk: self.talk(i),
                dtx: a.uses_dtx(),
                capture_clock: self.capture_clock,
                ..ClientSpec::speaker(i)
            };
            let setup = Setup {
                cert: self.cert,
                pooled: false,
                reads_events: true,
            };
            let name = format!("speaker-{i}");
            match member::join(a, &a.urls[0], &name, spec, "speaker", &setup).await {
                Ok(m) => speakers.push(m),
                Err(e) => return Err(format!("speaker {i} at {}: {e}", a.urls[0])),
            }
        }
        Ok(speakers)
    }

    /// How speaker `i` talks: its own conversation schedule from the seed.
    fn talk(&self, i: usize) -> TalkPattern {
        match self.args.pattern {
            Pattern::Continuous => TalkPattern::Continuous,
            Pattern::Conversation => TalkPattern::conversation(
                self.args.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
        }
    }

    /// Joins listeners until there are `target` (in listener order), unless
    /// the tally gives up; a decoding listener gets a thread of its own,
    /// the others run on the pool (`--threads 0`: a thread each too).
    pub(crate) async fn listeners_up_to(
        &self,
        target: usize,
        listeners: &mut Vec<Member>,
        tally: &mut JoinTally,
        progress: &Progress,
    ) {
        let a = self.args;
        let mut joined: Vec<(usize, Member)> = Vec::new();
        let mut joins = futures_util::stream::iter(listeners.len()..target)
            .map(|i| async move {
                let decode = a.decodes(i);
                let spec = ClientSpec {
                    decode,
                    log_packets: decode,
                    raw_media: !decode && !a.full_srtp,
                    capture_clock: self.capture_clock,
                    ..ClientSpec::listener()
                };
                let setup = Setup {
                    cert: self.cert,
                    pooled: !decode && a.threads > 0,
                    reads_events: true,
                };
                let u = i % a.urls.len();
                let name = format!("listener-{i}");
                let r = member::join(a, &a.urls[u], &name, spec, "listener", &setup).await;
                (i, u, r)
            })
            .buffer_unordered(a.join_parallel);
        while let Some((i, u, r)) = joins.next().await {
            match r {
                Ok(m) => {
                    progress.joined(m.client.clone());
                    joined.push((i, m));
                    tally.per_url[u] += 1;
                    tally.failed_in_a_row = 0;
                }
                Err(e) => {
                    eprintln!("loadgen: listener {i} at {}: {e}", a.urls[u]);
                    progress.failed();
                    tally.failed_in_a_row += 1;
                    if tally.gave_up() {
                        break;
                    }
                }
            }
        }
        // Joins still in flight after giving up are cancelled.
        drop(joins);
        joined.sort_by_key(|(i, _)| *i);
        listeners.extend(joined.into_iter().map(|(_, m)| m));
    }
}
