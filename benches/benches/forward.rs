//! Cost of the engine per forwarded (packet, listener), SRTP included, for one
//! speaker and 10, 100, 1000 and 5000 listeners, next to a baseline that only
//! copies and AES-256-GCM-seals the same packets (`BENCHMARKS.md`), and, for
//! 10, 100 and 1000, next to the engine on str0m's send path
//! (`direct_srtp: false`: what the engine did before its own SRTP sender).
//!
//! `cargo bench -p benches --bench forward`

use std::time::Duration;

use benches::{Baseline, ForwardRig};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use media_core::EngineConfig;

const LISTENERS: [usize; 4] = [10, 100, 1000, 5000];

/// str0m's send path costs ~10 µs per (packet, listener) at 5000: not run there.
const STR0M_PATH_UP_TO: usize = 1000;

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in LISTENERS {
        group.throughput(Throughput::Elements(n as u64));
        // Setup (1 + n str0m clients through ICE and DTLS) stays outside the
        // measured loop. A benchmark filtered out by name is never set up.
        engine(&mut group, "engine", n, EngineConfig::new(testkit::SEED));
        if n <= STR0M_PATH_UP_TO {
            let str0m_path = EngineConfig {
                direct_srtp: false,
                ..EngineConfig::new(testkit::SEED)
            };
            engine(&mut group, "engine_str0m_send", n, str0m_path);
        }
        let mut baseline: Option<Baseline> = None;
        group.bench_function(BenchmarkId::new("baseline_copy_aesgcm", n), |b| {
            let baseline = baseline.get_or_insert_with(|| Baseline::new(n));
            b.iter_custom(|iters| baseline.forward(iters));
        });
        if let Some(baseline) = &baseline {
            eprintln!(
                "forward/baseline_copy_aesgcm/{n}: {:.0}-byte Opus payloads mean, {}-byte RTP header, \
                 16-byte tag; over warm-up and measurement: {:.0} ns wall, {:.0} ns thread CPU per \
                 (packet, listener) (on CPU {:.0}% of the time)",
                baseline.mean_payload(),
                benches::RTP_HEADER,
                per_element(baseline.timed.wall, baseline.sealed()),
                per_element(baseline.timed.cpu, baseline.sealed()),
                baseline.timed.cpu_share(),
            );
        }
    }
    group.finish();
}

fn engine(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, n: usize, config: EngineConfig) {
    let mut rig: Option<ForwardRig> = None;
    group.bench_function(BenchmarkId::new(name, n), |b| {
        let rig = rig.get_or_insert_with(|| ForwardRig::with_config(n, config.clone()));
        b.iter_custom(|iters| rig.forward(iters));
    });
    if let Some(rig) = &rig {
        eprintln!(
            "forward/{name}/{n}: {} packets of {:.0} bytes mean, {:.3} transmits per (packet, listener); \
             over warm-up and measurement: {:.0} ns wall, {:.0} ns thread CPU per (packet, listener) \
             (on CPU {:.0}% of the time)",
            rig.packets,
            rig.bytes_in as f64 / rig.packets.max(1) as f64,
            rig.transmits as f64 / (rig.packets.max(1) * n as u64) as f64,
            per_element(rig.timed.wall, rig.packets * n as u64),
            per_element(rig.timed.cpu, rig.packets * n as u64),
            rig.timed.cpu_share(),
        );
    }
}

fn per_element(d: Duration, elements: u64) -> f64 {
    d.as_nanos() as f64 / elements.max(1) as f64
}

criterion_group!(benches, forward);
criterion_main!(benches);
