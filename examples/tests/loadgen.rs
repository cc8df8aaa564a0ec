//! The load generator against a real `sfu-server` (in-process, 127.0.0.1):
//! conversation speakers with DTX, count-only listeners on the pool reading
//! RTP headers, decoding listeners checked to hear the right speakers; the
//! JSON report has every figure, and latency is measured or honestly
//! unavailable.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sfu_server::{Config, Server};

/// The whole run (joins, first audio, a 3 s window, leaving) takes a few
/// seconds; the load generator bounds itself, this bounds the test.
const LIMIT: Duration = Duration::from_secs(120);

async fn server() -> Server {
    Server::start(Config {
        http: "127.0.0.1:0".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .expect("server starts")
}

/// Runs the load generator to its end; its stdout and stderr.
async fn run_loadgen(args: String) -> (String, String) {
    let run = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(args.split_whitespace())
            .output()
            .expect("loadgen runs")
    });
    let out = tokio::time::timeout(LIMIT, run)
        .await
        .expect("loadgen ends by itself")
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "loadgen failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_with_cheap_and_decoding_listeners() {
    let server = server().await;
    let args = format!(
        "--url http://{} --speakers 3 --listeners 12 --seconds 3 --pattern conversation \
         --seed 7 --decode-every 6 --threads 1 --join-parallel 4 --pid {}",
        server.http_addr(),
        std::process::id()
    );
    let (stdout, stderr) = run_loadgen(args).await;
    let r: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is JSON ({e}): {stderr}"));
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r:#}"));
    assert_eq!(r["pattern"], "conversation");
    assert_eq!(r["dtx"], true);
    assert_eq!(r["listener_mode"], "raw-header");
    assert_eq!(f("listeners"), 12.0, "{stderr}");
    assert_eq!(f("listeners_connected"), 12.0, "{r:#}");
    assert_eq!(f("listeners_without_audio"), 0.0, "{r:#}");
    assert_eq!(f("listeners_checked"), 2.0);
    assert_eq!(f("listeners_hearing_right_speakers"), 2.0, "{stderr}");
    assert_eq!(f("malformed_rtp"), 0.0);
    // Loopback on a shared machine: a little loss is possible, not more.
    assert!(f("loss") < 0.05, "{r:#}");
    assert!(f("packets_per_second") > 0.0);
    // DTX: a conversation speaker sends far fewer than 50 packets/s.
    let spk = f("speaker_packets_per_second");
    assert!(spk > 5.0 && spk < 45.0, "{r:#}");
    assert!(f("speaker_frames_suppressed_dtx") > 0.0, "{r:#}");
    assert!(f("jitter_streams") >= 12.0, "{r:#}");
    let (jm, j95) = (f("jitter_ms_mean"), f("jitter_ms_p95"));
    assert!(jm >= 0.0 && j95 >= 0.0 && jm < 200.0, "{r:#}");
    assert!(f("join_to_first_audio_ms_p50") <= f("join_to_first_audio_ms_p95"));
    assert!(f("join_to_first_audio_ms_p95") <= f("join_to_first_audio_ms_max"));
    // Latency is measured when the server forwards abs-capture-time, and
    // said to be unavailable (never made up) when it does not.
    if f("latency_samples") > 0.0 {
        assert!(r["latency_unavailable"].is_null());
        let (p50, p99) = (f("latency_ms_p50"), f("latency_ms_p99"));
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 1000.0, "{r:#}");
        let mos = f("mos");
        assert!((1.0..=4.5).contains(&mos), "{r:#}");
    } else {
        assert!(r["latency_ms_p50"].is_null() && r["mos"].is_null(), "{r:#}");
        let why = r["latency_unavailable"].as_str().unwrap();
        assert!(why.starts_with("unavailable ("), "{why}");
        assert!(r["mos_without_network_latency"]["mos"].as_f64().unwrap() > 1.0);
    }
    // --pid of this process: its CPU is reported.
    assert!(r["server_cpu_cores"].as_f64().is_some(), "{r:#}");
    // A progress line about once a second.
    assert!(stderr.matches("loadgen: ").count() >= 3, "{stderr}");
    assert!(
        stderr.contains("packets/s") && stderr.contains("loss so far"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_report_one_line_each() {
    let server = server().await;
    let args = format!(
        "--url http://{} --speakers 2 --steps 3,6 --seconds 1 --pid server={}",
        server.http_addr(),
        std::process::id()
    );
    let (stdout, stderr) = run_loadgen(args).await;
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(steps.len(), 2, "{stderr}");
    for (i, (r, n)) in steps.iter().zip([3, 6]).enumerate() {
        assert_eq!(r["step"], i);
        assert_eq!(r["listeners"], n, "{r:#}");
        assert_eq!(r["listeners_connected"], n, "{r:#}");
        assert!(r["stopped_because"].is_null());
        assert!(
            r["memory_by_process"]["server"]["rss_kib"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert!(r["server_rss_kib_per_listener"].as_f64().is_some());
        assert!(!r["machine_cpu_busy"].as_array().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_an_idle_websocket_beside_stable_listeners() {
    let server = server().await;
    let args = format!(
        "--url http://{} --speakers 2 --listeners 4 --seconds 4 --churn 4 --churn-stay 1 \
         --idle-ws 1 --join-parallel 2",
        server.http_addr()
    );
    let (stdout, stderr) = run_loadgen(args).await;
    let r: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is JSON ({e}): {stderr}"));
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("{v} in {r:#}"));
    // The stable listeners are the report's listeners; churners apart.
    assert_eq!(n(&r["listeners"]), 4, "{r:#}");
    assert_eq!(n(&r["listeners_connected"]), 4, "{r:#}");
    let churn = &r["churn"];
    // About 4 a second over the 4 s window (and the wait before it).
    assert!(n(&churn["joined"]) >= 8, "{r:#}");
    assert_eq!(n(&churn["joins_failed"]), 0, "{r:#}");
    let left = n(&churn["left_politely"]) + n(&churn["left_abruptly"]);
    assert!(left >= 4 && left <= n(&churn["joined"]), "{r:#}");
    assert!(n(&churn["left_abruptly"]) >= 1, "{r:#}");
    assert!(n(&churn["heard_audio"]) >= 1, "{r:#}");
    // The member that never reads its WebSocket joined and has media.
    let idle = &r["idle_ws"];
    assert_eq!(n(&idle["joined"]), 1, "{r:#}");
    assert_eq!(n(&idle["connected_at_end"]), 1, "{r:#}");
}

#[test]
fn bad_flags_exit_2_with_clap_errors() {
    for (args, says) in [
        (
            &["--listeners", "x"][..],
            "invalid value 'x' for '--listeners",
        ),
        (
            &["--pattern", "shouting"],
            "possible values: continuous, conversation",
        ),
        (&["--threads", "99999"], "99999 is not in 0..=64"),
        (&["--bogus"], "unexpected argument '--bogus'"),
        (
            &["--decode", "--listeners", "6000"],
            "at most 5000 listeners",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(args)
            .output()
            .expect("loadgen runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(says) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn help_lists_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--help")
        .output()
        .expect("loadgen runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--url",
        "--edges",
        "--channel",
        "--speakers",
        "--listeners",
        "--seconds",
        "--join-timeout",
        "--pattern",
        "--seed",
        "--no-dtx",
        "--threads",
        "--full-srtp",
        "--join-parallel",
        "--pid",
        "--decode",
        "--decode-every",
        "--steps",
        "--stop-loss",
        "--stop-cpu",
        "--churn",
        "--churn-stay",
        "--idle-ws",
    ] {
        assert!(
            help.split_whitespace().any(|w| w == flag),
            "{flag} in {help}"
        );
    }
}
