//! Cost of speaker selection per packet, for channels of 3, 50 and 1000
//! candidate speakers that all send a packet every 20 ms: most silent or
//! background noise, one talker at a time with pauses, another cutting in,
//! someone coughing, the talker changing every 2 s (`BENCHMARKS.md`).
//!
//! - `on_packet`: `SpeakerSelector::on_packet`, per packet;
//! - `record_level`: `DominantSpeakerDetector::record_level`, per packet;
//! - `per_packet_all`: both, plus a dominant-speaker decision (and a pin when
//!   it changed) every 300 ms of packets, per packet: all the selection work
//!   the engine does for a channel;
//! - `decide`: one dominant-speaker decision (`decide`), per decision.
//!
//! `cargo bench -p benches --bench selection`

use std::time::Duration;

use benches::selection::{Part, SelectionRig};
use benches::Timed;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const MEMBERS: [usize; 3] = [3, 50, 1000];

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("selection");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for n in MEMBERS {
        for (name, part) in [
            ("on_packet", Part::OnPacket),
            ("record_level", Part::RecordLevel),
            ("per_packet_all", Part::All),
        ] {
            let mut rig: Option<(SelectionRig, Timed)> = None;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                let (rig, timed) =
                    rig.get_or_insert_with(|| (SelectionRig::new(n), Timed::default()));
                b.iter_custom(|packets| timed.measure(|| rig.feed(packets, part)).1);
            });
            if let Some((rig, timed)) = &rig {
                report(&format!("selection/{name}/{n}"), rig, timed, "packet");
                if part != Part::RecordLevel {
                    rig.assert_selection_moved();
                }
                if part == Part::All {
                    rig.assert_dominant_moved();
                }
            }
        }
        let mut rig: Option<(SelectionRig, Timed)> = None;
        group.bench_function(BenchmarkId::new("decide", n), |b| {
            let (rig, timed) = rig.get_or_insert_with(|| (SelectionRig::new(n), Timed::default()));
            b.iter_custom(|decisions| timed.measure(|| rig.decide(decisions)).0);
        });
        if let Some((rig, timed)) = &rig {
            report(&format!("selection/decide/{n}"), rig, timed, "decision");
            rig.assert_dominant_moved();
            eprintln!(
                "selection/decide/{n}: timed call by call; an empty timed window costs {:.0} ns",
                benches::clock_overhead().as_nanos()
            );
        }
    }
    group.finish();
}

/// What the rig did over warm-up and measurement (its setup check included),
/// so that a figure that measured nothing shows.
fn report(name: &str, rig: &SelectionRig, timed: &Timed, per: &str) {
    let c = rig.counts;
    let cycles = c.packets as f64 / rig.cycle_packets() as f64;
    eprintln!(
        "{name}: {} members, {} packets fed ({cycles:.1} cycles of 10 s), per cycle {:.1} selection \
         changes and {:.1} dominant-speaker changes (of the parts this bench runs); timed loop (per \
         {per} and its untimed feed) on CPU {:.0}% of the time",
        rig.members(),
        c.packets,
        c.switches as f64 / cycles,
        c.dominant_changes as f64 / cycles,
        timed.cpu_share(),
    );
}

criterion_group!(benches, selection);
criterion_main!(benches);
