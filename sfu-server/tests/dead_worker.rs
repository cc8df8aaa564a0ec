//! A media worker that dies takes the node out of rotation: health checks
//! fail with the reason, `/metrics` says which worker is down, joins are
//! refused, every member is told and its session closed, and the process
//! exits non-zero so that its supervisor restarts it. The worker is made to
//! panic through a hook that exists only in debug builds.
#![cfg(debug_assertions)]

mod binary;
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use testkit::client::ClientSpec;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_fails_health_tells_members_and_refuses_joins() {
    let server = server(config()).await;
    let base = format!("http://{}", server.http_addr());
    let (mut ws, _peer, _) = ws_member(&server, "c", "a", ClientSpec::speaker(0), json!({})).await;
    for path in ["healthz", "readyz"] {
        let r = reqwest::get(format!("{base}/{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let up = |m: &prometheus_parse::Scrape| value(m, "sfu_worker_up", Some(("worker", "0")));
    assert_eq!(up(&scrape(&base).await), 1.0);

    server.state().workers.all()[0].crash_for_test().await;

    // The member is told, then its socket closes.
    let msg = ws.recv_type("shutdown").await;
    assert_eq!(msg["deadline_ms"], 0);
    let reason = msg["reason"].as_str().unwrap();
    assert!(
        reason.contains("media worker") && reason.contains("failed"),
        "{reason}"
    );
    let end = tokio::time::timeout(LIMIT, ws.socket.next())
        .await
        .expect("closed in time");
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );

    let failure = tokio::time::timeout(LIMIT, server.state().health.failed())
        .await
        .expect("the node notices");
    assert_eq!(
        failure,
        "media worker 0 stopped: panicked: media worker crashed on purpose (test hook)"
    );
    for path in ["healthz", "readyz"] {
        let r = reqwest::get(format!("{base}/{path}")).await.unwrap();
        assert_eq!(r.status(), 503, "{path}");
        assert_eq!(r.text().await.unwrap(), format!("failed: {failure}\n"));
    }
    assert_eq!(up(&scrape(&base).await), 0.0);

    // Joins are refused: WHIP with 503, the WebSocket with `shutting_down`.
    let (_publisher, offer) = testkit::udp::UdpPeer::new("w", &ClientSpec::speaker(1)).unwrap();
    let r = post_sdp(&base, "/whip/c", offer).await;
    assert_eq!(r.status(), 503);
    let mut late = Ws::connect(&server).await;
    late.send(json!({"type": "join", "channel": "c", "offer": "v=0"}))
        .await;
    assert_eq!(late.recv().await["code"], "shutting_down");
}

/// The built binary exits with a failure status after a dead worker, so
/// that systemd (`Restart=on-failure`) or Kubernetes restarts it.
#[cfg(unix)]
#[test]
fn a_dead_worker_makes_the_process_exit_non_zero() {
    let mut child = binary::sfu_server_on_free_ports()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sfu-server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The server prints its URL once it listens (its signal handlers are
    // installed by then).
    assert!(lines.any(|l| l.unwrap().contains("open http://")));
    std::thread::spawn(move || for _ in lines {});
    binary::signal(&child, nix::sys::signal::Signal::SIGUSR2);

    // A watchdog, so that a server that never exits fails the test.
    let pid = child.id();
    let (done, waiting) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if waiting.recv_timeout(LIMIT).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let started = Instant::now();
    let out = child.wait_with_output().expect("the server exits");
    let _ = done.send(());
    watchdog.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the node failed: media worker 0 stopped: panicked"),
        "{stderr}"
    );
    // The grace is short: members of a dead worker have nothing to wait for.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
