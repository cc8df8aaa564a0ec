//! Cost of routing one datagram to its peer with 10,000 peers registered
//! (`media_core`'s `Demux`), next to a baseline for each path measured in
//! the same run (`BENCHMARKS.md`):
//!
//! - `rtp_tuple`: an RTP datagram from a known 4-tuple; baseline
//!   `baseline_hashmap`: a plain `HashMap` lookup of the same address pair;
//! - `stun_ufrag`: a STUN binding request from an address not yet known,
//!   found by the ufrag of its USERNAME and checked with the peer's password
//!   (MESSAGE-INTEGRITY); baseline `baseline_hmac_sha1`: one HMAC-SHA1 of the
//!   same message with the same password; and `hmac_sha1_prekeyed`, the
//!   same HMAC with the key (`hmac::Key`) made beforehand, to show what
//!   making the key costs.
//!
//! Peers are visited in a seeded random order; every call checks that the
//! right peer was found.
//!
//! `cargo bench -p benches --bench demux`

use std::time::Duration;

use benches::demux::{DemuxRig, PEERS};
use benches::Timed;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

type Path = fn(&mut DemuxRig, u64) -> u64;

fn demux(c: &mut Criterion) {
    let mut rig = DemuxRig::new(PEERS);
    eprintln!(
        "demux: {PEERS} peers, binding requests of {:.0} bytes mean",
        rig.mean_stun_len()
    );
    let mut group = c.benchmark_group("demux");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    let paths: [(&str, Path); 5] = [
        ("rtp_tuple", DemuxRig::rtp_tuple),
        ("baseline_hashmap", DemuxRig::baseline_hashmap),
        ("stun_ufrag", DemuxRig::stun_ufrag),
        ("baseline_hmac_sha1", DemuxRig::baseline_hmac_sha1),
        ("hmac_sha1_prekeyed", DemuxRig::hmac_sha1_prekeyed),
    ];
    for (name, path) in paths {
        let mut timed = Timed::default();
        let mut datagrams = 0;
        group.bench_function(BenchmarkId::new(name, PEERS), |b| {
            b.iter_custom(|iters| {
                let (ok, wall) = timed.measure(|| path(&mut rig, iters));
                assert_eq!(ok, iters, "{name}: a datagram went to the wrong peer");
                datagrams += iters;
                wall
            });
        });
        if datagrams > 0 {
            eprintln!(
                "demux/{name}/{PEERS}: {datagrams} datagrams, all to the right peer; over warm-up and \
                 measurement {:.1} ns wall, {:.1} ns thread CPU per datagram (on CPU {:.0}% of the time)",
                timed.wall.as_nanos() as f64 / datagrams as f64,
                timed.cpu.as_nanos() as f64 / datagrams as f64,
                timed.cpu_share(),
            );
        }
    }
    group.finish();
    // The ratios again, each path and its baseline timed in alternation, so
    // that both see the same load: batches of 10 visits of every peer (RTP)
    // or one (STUN), about 10 ms each.
    let n = PEERS as u64;
    let rig = std::cell::RefCell::new(rig);
    for (name, batch, path, base) in [
        (
            "rtp_tuple / baseline_hashmap",
            10 * n,
            DemuxRig::rtp_tuple as Path,
            DemuxRig::baseline_hashmap as Path,
        ),
        (
            "stun_ufrag / baseline_hmac_sha1",
            n,
            DemuxRig::stun_ufrag,
            DemuxRig::baseline_hmac_sha1,
        ),
        (
            "baseline_hmac_sha1 / hmac_sha1_prekeyed",
            n,
            DemuxRig::baseline_hmac_sha1,
            DemuxRig::hmac_sha1_prekeyed,
        ),
    ] {
        let p = benches::paired(
            PAIRED_ROUNDS,
            || assert_eq!(path(&mut rig.borrow_mut(), batch), batch),
            || assert_eq!(base(&mut rig.borrow_mut(), batch), batch),
        );
        eprintln!(
            "demux paired, {PAIRED_ROUNDS} rounds of {batch} datagrams each: {name} = {:.2} median \
             (quartiles {:.2} - {:.2}), {:.2} fastest round over fastest round",
            p.median, p.q1, p.q3, p.fastest
        );
    }
}

/// Rounds of the paired ratios.
const PAIRED_ROUNDS: usize = 100;

criterion_group!(benches, demux);
criterion_main!(benches);
