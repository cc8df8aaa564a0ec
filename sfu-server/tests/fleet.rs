//! The fleet's coordination against a real redis-server (scripts/setup.sh
//! installs it; each test starts its own on a free port, without
//! persistence): node records expire unless refreshed, concurrent first
//! claims of a channel yield one core, a lease lost to expiry is fenced
//! (the old holder can neither renew nor delete the new one), garbage in
//! Redis is skipped and counted, and an outage is reported and recovered.

mod binary;
mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu_server::fleet::{FleetError, Keys, Lease, NodeRecord, RedisFleet, Registry};

use common::LIMIT;
/// Every Redis call's deadline.
const CALL: Duration = Duration::from_secs(2);

/// A redis-server of the test's own, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let redis = Redis { child, port };
        // Up when it answers PING (bounded).
        let until = Instant::now() + LIMIT;
        loop {
            let ping = redis::Client::open(redis.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return redis;
            }
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn fleet(&self) -> RedisFleet {
        RedisFleet::connect(&self.url(), Keys::new("test:"), CALL)
            .await
            .expect("connects")
    }

    /// The fleet under the keys the server uses.
    async fn server_fleet(&self) -> RedisFleet {
        RedisFleet::connect(&self.url(), Keys::new(sfu_server::server::FLEET_KEYS), CALL)
            .await
            .expect("connects")
    }

    fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record(id: u16, region: &str) -> NodeRecord {
    NodeRecord {
        id,
        region: region.into(),
        core: true,
        edge: true,
        url: format!("http://127.0.0.1:{}", 8000 + id),
        media: vec![format!("127.0.0.1:{}", 9000 + id).parse().unwrap()],
        cluster: None,
        draining: false,
        members: 0,
        channels: 0,
        cpu: 0.0,
    }
}

/// Polls `check` until it holds (bounded by [`LIMIT`]).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let until = tokio::time::Instant::now() + LIMIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn ids(fleet: &RedisFleet) -> Vec<u16> {
    fleet.nodes().await.unwrap().iter().map(|n| n.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_refreshing_leaves_the_registry_by_itself() {
    let redis = Redis::start();
    let fleet = Arc::new(redis.fleet().await);
    fleet
        .register(&record(1, "eu"), Duration::from_millis(500))
        .await
        .unwrap();
    fleet
        .register(&record(2, "us"), Duration::from_secs(60))
        .await
        .unwrap();
    // Node 3 refreshes a short-lived record: it outlives node 1's.
    let registry = Registry::spawn(
        fleet.clone(),
        || async {
            Some(NodeRecord {
                members: 42,
                ..record(3, "eu")
            })
        },
        Duration::from_millis(100),
        Duration::from_millis(400),
    );
    eventually("node 3 registered", || async {
        ids(&fleet).await == [1, 2, 3]
    })
    .await;
    let three = fleet.nodes().await.unwrap()[2].clone();
    assert_eq!((three.region.as_str(), three.members), ("eu", 42));
    let registered = Instant::now();
    eventually("node 1 expired", || async { ids(&fleet).await == [2, 3] }).await;
    assert!(registered.elapsed() < Duration::from_secs(5));
    assert!(!registry.is_degraded());
    // Node 3 stops (its registry dropped): it leaves as node 1 did.
    drop(registry);
    eventually("node 3 expired", || async { ids(&fleet).await == [2] }).await;
    fleet.deregister(2).await.unwrap();
    assert!(ids(&fleet).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_claims_yield_exactly_one_core_per_channel() {
    let redis = Redis::start();
    let nodes = [
        redis.fleet().await,
        redis.fleet().await,
        redis.fleet().await,
    ];
    let nodes = Arc::new(nodes);
    let ttl = Duration::from_secs(30);
    let mut claims = Vec::new();
    for i in 0..150u16 {
        let nodes = nodes.clone();
        claims.push(tokio::spawn(async move {
            let node = i % 3;
            let channel = format!("hall-{}", i % 3 + 1);
            let lease = nodes[usize::from(node)]
                .claim(&channel, node + 1, ttl)
                .await
                .unwrap();
            (channel, lease)
        }));
    }
    let mut winners = std::collections::HashMap::<String, Lease>::new();
    for c in claims {
        let (channel, lease) = c.await.unwrap();
        let first = *winners.entry(channel.clone()).or_insert(lease);
        assert_eq!(first, lease, "{channel}: two cores");
        assert_eq!(lease.epoch, 1, "one claim took an epoch");
    }
    assert_eq!(winners.len(), 3);
    for (channel, lease) in &winners {
        assert_eq!(nodes[0].lease(channel).await.unwrap(), Some(*lease));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_to_expiry_is_fenced() {
    let redis = Redis::start();
    let (old, new) = (redis.fleet().await, redis.fleet().await);
    let short = Duration::from_millis(300);
    let first = old.claim("stage", 1, short).await.unwrap();
    assert_eq!(first, Lease { node: 1, epoch: 1 });
    assert!(old.renew("stage", first, short).await.unwrap());
    // Node 1 stops renewing (paused, partitioned): its lease runs out and
    // node 2 takes the channel with a higher epoch.
    eventually("the lease expired", || async {
        old.lease("stage").await.unwrap().is_none()
    })
    .await;
    let second = new
        .claim("stage", 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(second, Lease { node: 2, epoch: 2 });
    // Node 1 comes back: it can neither extend nor delete node 2's lease,
    // and a claim answers node 2's.
    assert!(!old.renew("stage", first, short).await.unwrap());
    assert!(!old.release("stage", first).await.unwrap());
    assert_eq!(old.claim("stage", 1, short).await.unwrap(), second);
    assert_eq!(old.lease("stage").await.unwrap(), Some(second));
    // Node 2 hands it over: the next claim gets the next epoch.
    assert!(new
        .renew("stage", second, Duration::from_secs(30))
        .await
        .unwrap());
    assert!(new.release("stage", second).await.unwrap());
    assert_eq!(new.lease("stage").await.unwrap(), None);
    let third = old.claim("stage", 1, short).await.unwrap();
    assert_eq!(third, Lease { node: 1, epoch: 3 });

    // Renewals in batches: each lease for itself, in order, over more
    // than one batch.
    let long = Duration::from_secs(30);
    let mut many = Vec::new();
    for c in 0..300 {
        let channel = format!("room-{c}");
        many.push((channel.clone(), old.claim(&channel, 1, long).await.unwrap()));
    }
    many.push(("stage".to_owned(), first));
    many.push(("nowhere".to_owned(), Lease { node: 1, epoch: 1 }));
    let renewed: Vec<bool> = old
        .renew_many(&many, long)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(renewed.len(), 302);
    assert!(renewed[..300].iter().all(|r| *r));
    assert_eq!(&renewed[300..], [false, false], "a lost lease, no lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_skipped_and_counted() {
    let redis = Redis::start();
    let fleet = redis.fleet().await;
    fleet
        .register(&record(1, "eu"), Duration::from_secs(60))
        .await
        .unwrap();
    let mut raw = redis.raw();
    let huge = "x".repeat(100_000);
    for (key, value) in [
        ("test:node:9", "garbage"),
        ("test:node:10", huge.as_str()),
        ("test:node:11", "{\"id\": 11}"),
        ("test:lease:broken", "nonsense"),
    ] {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query::<()>(&mut raw)
            .unwrap();
    }
    assert_eq!(ids(&fleet).await, [1], "only the record that parses");
    assert_eq!(fleet.skipped(), 3);
    assert!(matches!(
        fleet.lease("broken").await,
        Err(FleetError::BadLease(_))
    ));
    assert!(matches!(
        fleet.claim("broken", 1, Duration::from_secs(1)).await,
        Err(FleetError::BadLease(_))
    ));
    assert_eq!(fleet.skipped(), 5);
    // Other channels are unaffected.
    assert_eq!(
        fleet
            .claim("fine", 1, Duration::from_secs(1))
            .await
            .unwrap(),
        Lease { node: 1, epoch: 1 }
    );
}

/// Redis stops: calls fail within their deadline (never hang), the
/// registry reports the node degraded; Redis returns (empty, as after a
/// restart without persistence): the record is written again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_reported_in_time_and_recovered_from() {
    let redis = Redis::start();
    let port = redis.port;
    let fleet = Arc::new(redis.fleet().await);
    let registry = Registry::spawn(
        fleet.clone(),
        || async { Some(record(5, "eu")) },
        Duration::from_millis(100),
        Duration::from_secs(3),
    );
    eventually("registered", || async { ids(&fleet).await == [5] }).await;
    drop(redis);
    let asked = Instant::now();
    assert!(fleet.nodes().await.is_err(), "redis is down");
    assert!(asked.elapsed() < CALL + Duration::from_secs(1), "no hang");
    eventually("degraded", || async { registry.is_degraded() }).await;
    let failures = registry.failures();
    assert!(failures > 0);

    let _back = Redis::start_on(port);
    eventually("fresh again", || async {
        !registry.is_degraded() && fleet.nodes().await.is_ok_and(|n| n.len() == 1)
    })
    .await;
    assert_eq!(ids(&fleet).await, [5]);
}

async fn get(url: String) -> (u16, String) {
    let r = common::http(reqwest::Method::GET, url, &[], String::new()).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Two servers with `redis_url` register themselves (id, region, URL,
/// media addresses); with Redis gone they keep serving and say they are
/// degraded (`/readyz` 200, `sfu_fleet_degraded 1`); a drained server takes
/// its record out at once, not after its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_register_in_the_fleet_and_survive_its_outage() {
    let redis = Redis::start();
    let node = |id: u16, region: &str| sfu_server::Config {
        redis_url: Some(redis.url()),
        node_id: Some(id),
        region: region.into(),
        workers: 2,
        ..common::config()
    };
    let eu = common::server(node(1, "eu")).await;
    let us = common::server(sfu_server::Config {
        public_url: Some("https://us.example.org".into()),
        ..node(2, "us")
    })
    .await;
    // The keys the server uses.
    let fleet = redis.server_fleet().await;
    eventually("both registered", || async {
        fleet.nodes().await.is_ok_and(|n| n.len() == 2)
    })
    .await;
    let nodes = fleet.nodes().await.unwrap();
    assert_eq!(nodes[0].id, 1);
    assert_eq!(nodes[0].region, "eu");
    assert_eq!(nodes[0].url, format!("http://{}", eu.http_addr()));
    assert_eq!(nodes[0].media, eu.udp_addrs());
    assert!(nodes[0].core && !nodes[0].draining);
    assert_eq!(nodes[1].url, "https://us.example.org");
    assert_eq!(nodes[1].media, us.udp_addrs());
    // A second node with a live node's id is refused at start-up.
    let twin = sfu_server::Server::start(node(1, "us")).await.unwrap_err();
    assert_eq!(twin.kind(), std::io::ErrorKind::AddrInUse, "{twin}");
    assert!(twin.to_string().contains("node_id 1 is in use"), "{twin}");
    assert_eq!(
        fleet.nodes().await.unwrap()[0].url,
        nodes[0].url,
        "untouched"
    );

    // A drained node leaves at once (its TTL is 3 s).
    us.drain(Duration::ZERO).await;
    assert_eq!(ids(&fleet).await, [1]);

    let base = format!("http://{}", eu.http_addr());
    assert_eq!(get(format!("{base}/readyz")).await, (200, "ready\n".into()));
    drop(redis);
    eventually("degraded", || async {
        get(format!("{base}/readyz")).await.1.contains("degraded")
    })
    .await;
    assert_eq!(get(format!("{base}/readyz")).await.0, 200, "still serving");
    let metrics = get(format!("{base}/metrics")).await.1;
    assert!(metrics.contains("sfu_fleet_degraded 1"), "{metrics}");
}

/// `sfu-server fleet --redis URL` lists the nodes and the channels' cores;
/// with no Redis there it fails with a message, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_command_lists_nodes_and_cores() {
    let redis = Redis::start();
    let fleet = redis.server_fleet().await;
    fleet
        .register(&record(7, "ap-south"), Duration::from_secs(60))
        .await
        .unwrap();
    fleet
        .claim("town-hall", 7, Duration::from_secs(60))
        .await
        .unwrap();
    let run = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sfu-server"))
            .args(["fleet", "--redis", &url])
            .env_remove("SFU_REDIS_URL")
            .output()
            .unwrap()
    };
    let out = run(redis.url());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ap-south") && text.contains("http://127.0.0.1:8007"),
        "{text}"
    );
    assert!(text.contains("town-hall: node 7 (epoch 1)"), "{text}");
    let port = redis.port;
    drop(redis);
    let asked = Instant::now();
    let out = run(format!("redis://127.0.0.1:{port}/"));
    assert!(!out.status.success());
    assert!(!out.stderr.is_empty());
    assert!(asked.elapsed() < Duration::from_secs(10));
}

/// In-process servers of one fleet on `redis`, one worker each, node `i + 1`
/// in `regions[i]` (the load balancer's `x-region` header trusted): the
/// servers, their base URLs and the fleet as they see it, once every one
/// is registered.
async fn fleet_of(
    redis: &Redis,
    regions: &[&str],
) -> (Vec<sfu_server::Server>, Vec<String>, RedisFleet) {
    fleet_with_edges(redis, regions, 0).await
}

/// [`fleet_of`] with regional edges past `edge_after` members (0: none).
async fn fleet_with_edges(
    redis: &Redis,
    regions: &[&str],
    edge_after: usize,
) -> (Vec<sfu_server::Server>, Vec<String>, RedisFleet) {
    fleet_with(redis, regions, |c| {
        c.edge_after = edge_after;
        c.cluster_listen = "127.0.0.1:0".parse().unwrap();
        c.cluster_secret = (edge_after > 0).then(|| common::CLUSTER_SECRET.into());
    })
    .await
}

/// [`fleet_of`] with each node's configuration changed by `tweak`.
async fn fleet_with(
    redis: &Redis,
    regions: &[&str],
    tweak: impl Fn(&mut sfu_server::Config),
) -> (Vec<sfu_server::Server>, Vec<String>, RedisFleet) {
    let mut servers = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let mut config = sfu_server::Config {
            redis_url: Some(redis.url()),
            node_id: Some(i as u16 + 1),
            region: (*region).into(),
            region_header: Some("x-region".into()),
            workers: 1,
            ..common::config()
        };
        tweak(&mut config);
        servers.push(common::server(config).await);
    }
    let base = servers
        .iter()
        .map(|s| format!("http://{}", s.http_addr()))
        .collect();
    let fleet = redis.server_fleet().await;
    eventually("every node registered", || async {
        fleet.nodes().await.is_ok_and(|n| n.len() == regions.len())
    })
    .await;
    (servers, base, fleet)
}

/// Asks node `base` to join `channel` (with `headers` on the WebSocket
/// upgrade) and follows a `redirect` once: the socket, the peer, the
/// `joined` message and the URL it was redirected to, if any.
async fn join_through(
    base: &str,
    headers: &[(&'static str, &str)],
    channel: &str,
    name: &str,
    spec: testkit::client::ClientSpec,
) -> (
    common::Ws,
    testkit::udp::UdpPeer,
    serde_json::Value,
    Option<String>,
) {
    let mut redirected = None;
    let mut at = base.to_owned();
    for _ in 0..2 {
        let mut ws = common::Ws::connect_with(&at, headers).await;
        let (mut peer, offer) = testkit::udp::UdpPeer::new(name, &spec).expect("peer");
        ws.send(serde_json::json!({
            "type": "join", "channel": channel, "offer": offer, "identity": name
        }))
        .await;
        let reply = ws.recv().await;
        match reply["type"].as_str() {
            Some("joined") => {
                peer.start(reply["answer"].as_str().expect("answer"));
                return (ws, peer, reply, redirected);
            }
            Some("redirect") => {
                assert_eq!(reply["channel"], channel);
                assert_eq!(reply["request"], "join");
                at = reply["url"].as_str().expect("url").to_owned();
                redirected = Some(at.clone());
            }
            _ => panic!("{name}: {reply}"),
        }
    }
    panic!("{name}: redirected twice");
}

/// Three nodes in two regions on one Redis: a channel's first member is
/// sent to the least-loaded node of its region (from the load balancer's
/// header), which claims the channel; a member joining through any other
/// node is sent there too, and hears the first; first joins racing on all
/// three nodes end on one core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_through_any_node_reach_the_channels_core() {
    use testkit::client::ClientSpec;
    let redis = Redis::start();
    let (_servers, base, fleet) = fleet_of(&redis, &["eu", "eu", "us"]).await;

    // Alice, in eu, comes in through the us node.
    let (_a_ws, alice, _, to) = join_through(
        &base[2],
        &[("x-region", "eu")],
        "hall",
        "alice",
        ClientSpec::speaker(0),
    )
    .await;
    assert_eq!(
        to.as_deref(),
        Some(base[0].as_str()),
        "eu's least-loaded node"
    );
    let lease = fleet.lease("hall").await.unwrap().expect("claimed");
    assert_eq!((lease.node, lease.epoch), (1, 1));
    // Bob comes in through node 2 (no header: node 2's region): the
    // channel's core is node 1 whatever his region.
    let (_b_ws, bob, _, to) =
        join_through(&base[1], &[], "hall", "bob", ClientSpec::listener()).await;
    assert_eq!(to.as_deref(), Some(base[0].as_str()));
    // Carol joins node 1 directly: no redirect.
    let (mut carol_ws, _carol, _, to) =
        join_through(&base[0], &[], "hall", "carol", ClientSpec::listener()).await;
    assert_eq!(to, None);
    alice.set_talking(true);
    assert!(common::hears(&bob, &[0], 25), "bob hears alice on the core");

    // 51 first joins of another channel, 17 through each node, at once.
    let joins = (0..51).map(|i| {
        let at = base[i % 3].clone();
        async move {
            let (ws, peer, joined, to) = join_through(
                &at,
                &[("x-region", "us")],
                "race",
                &format!("r{i}"),
                ClientSpec::listener(),
            )
            .await;
            (ws, peer, joined, to.unwrap_or(at))
        }
    });
    let raced = futures_util::future::join_all(joins).await;
    let served: std::collections::BTreeSet<&str> =
        raced.iter().map(|(_, _, _, at)| at.as_str()).collect();
    assert_eq!(served.len(), 1, "one core: {served:?}");
    let lease = fleet.lease("race").await.unwrap().expect("claimed");
    assert_eq!(lease.epoch, 1, "one claim won");
    assert_eq!(
        served.first().copied(),
        Some(base[usize::from(lease.node) - 1].as_str())
    );
    assert_eq!(lease.node, 3, "the us node, for joiners in us");

    // Fencing: node 2 holds "hall" now, with a newer epoch (as when node 1
    // was paused past its lease and node 2 claimed it). Node 1 finds out at
    // its next renewal: its members there are sent to node 2 and leave.
    redis::cmd("SET")
        .arg("sfu:lease:hall")
        .arg("2:99")
        .query::<()>(&mut redis.raw())
        .unwrap();
    let moved = carol_ws.recv_type("redirect").await;
    assert_eq!(moved["url"], base[1].as_str(), "{moved}");
    assert_eq!(moved["channel"], "hall");
    assert!(moved.get("request").is_none(), "{moved}");
    let (_d_ws, _dave, _, to) =
        join_through(&base[1], &[], "hall", "dave", ClientSpec::listener()).await;
    assert_eq!(to, None, "node 2 serves the channel it holds");
    assert_eq!(
        fleet.lease("hall").await.unwrap(),
        Some(Lease { node: 2, epoch: 99 }),
        "node 1 never touched its successor's lease"
    );
}

/// Redis goes away for longer than a lease mid-call: the members of a
/// channel keep hearing each other without a gap, a new channel is served
/// where it is asked for; Redis comes back empty (a restart without
/// persistence): the nodes register again, the core claims its channel back
/// and joins through the other node are sent to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_loses_no_audio_and_is_reconciled() {
    use testkit::client::ClientSpec;
    let redis = Redis::start();
    let port = redis.port;
    let (_servers, base, fleet) = fleet_of(&redis, &["default", "default"]).await;
    let (_s_ws, speaker, _, _) =
        join_through(&base[0], &[], "hall", "speaker", ClientSpec::speaker(0)).await;
    let (_l_ws, listener, _, to) =
        join_through(&base[1], &[], "hall", "listener", ClientSpec::listener()).await;
    assert_eq!(to.as_deref(), Some(base[0].as_str()));
    speaker.set_talking(true);
    assert!(common::hears(&listener, &[0], 25));

    drop(redis);
    let down = Instant::now();
    eventually("node 1 degraded", || async {
        get(format!("{}/readyz", base[0]))
            .await
            .1
            .contains("degraded")
    })
    .await;
    // A new channel while Redis is down: served where it is asked for.
    let (_n_ws, _newcomer, _, to) =
        join_through(&base[1], &[], "quiet", "newcomer", ClientSpec::listener()).await;
    assert_eq!(to, None);
    // Down for 10 s, five times a lease.
    let outage = Duration::from_secs(10);
    let back_at = down + outage;
    while Instant::now() < back_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _redis = Redis::start_on(port);
    // 50 frames a second: over the outage at most a few frames short.
    let frames = (outage.as_millis() / 20) as usize - 10;
    assert!(
        listener.wait_until(Instant::now() + LIMIT, |c| c
            .tones_heard(down, back_at, frames)
            .contains(&0)),
        "the listener lost audio while redis was down"
    );

    eventually("node 1 holds hall again", || async {
        fleet
            .lease("hall")
            .await
            .is_ok_and(|l| l.is_some_and(|l| l.node == 1))
    })
    .await;
    eventually("node 2 claimed quiet", || async {
        fleet
            .lease("quiet")
            .await
            .is_ok_and(|l| l.is_some_and(|l| l.node == 2))
    })
    .await;
    let (_x_ws, _late, _, to) =
        join_through(&base[1], &[], "hall", "late", ClientSpec::listener()).await;
    assert_eq!(
        to.as_deref(),
        Some(base[0].as_str()),
        "placed through the lease again"
    );
    assert!(common::hears(&listener, &[0], 25));
}

/// A running `sfu-server` process of a fleet; killed when dropped.
struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(redis: &str, id: u16) -> Node {
        Node::start_with(redis, id, &[])
    }

    /// Node `id` with the flags `extra` too.
    fn start_with(redis: &str, id: u16, extra: &[&str]) -> Node {
        use std::io::BufRead;
        let mut child = binary::sfu_server_on_free_ports()
            .args([
                "--workers",
                "1",
                "--node-id",
                &id.to_string(),
                "--redis",
                redis,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sfu-server starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // "sfu-server: open http://127.0.0.1:PORT/ in a browser (…)"
        let base = lines
            .find_map(|l| {
                let l = l.ok()?;
                let url = l.split_whitespace().find(|w| w.starts_with("http://"))?;
                Some(url.trim_end_matches('/').to_owned())
            })
            .expect("the server says where it listens");
        std::thread::spawn(move || for _ in lines {});
        Node { child, base }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Joins `channel` through `base` until it works: a join refused while the
/// channel's core is moving, or sent to a node that no longer answers, is
/// tried again through `base` (as a client's reconnect does).
async fn join_until_joined(
    base: &str,
    channel: &str,
    name: &str,
    spec: &testkit::client::ClientSpec,
) -> (common::Ws, testkit::udp::UdpPeer) {
    join_from_until_joined(base, &[], channel, name, spec).await
}

/// [`join_until_joined`] with `headers` on every WebSocket upgrade (the
/// load balancer's region header).
async fn join_from_until_joined(
    base: &str,
    headers: &[(&'static str, &str)],
    channel: &str,
    name: &str,
    spec: &testkit::client::ClientSpec,
) -> (common::Ws, testkit::udp::UdpPeer) {
    let until = tokio::time::Instant::now() + LIMIT;
    loop {
        assert!(tokio::time::Instant::now() < until, "{name} never joined");
        let mut ws = common::Ws::connect_with(base, headers).await;
        let (mut peer, offer) = testkit::udp::UdpPeer::new(name, spec).expect("peer");
        ws.send(serde_json::json!({"type": "join", "channel": channel, "offer": offer}))
            .await;
        let reply = ws.recv().await;
        match reply["type"].as_str() {
            Some("joined") => {
                peer.start(reply["answer"].as_str().unwrap());
                return (ws, peer);
            }
            Some("redirect") => {
                let url = reply["url"].as_str().unwrap().to_owned();
                if tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
                    .await
                    .is_ok()
                {
                    let (ws, peer, _, _) =
                        join_through(&url, headers, channel, name, spec.clone()).await;
                    return (ws, peer);
                }
            }
            _ => assert_eq!(reply["code"], "channel_moving", "{reply}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The core of a channel is killed (SIGKILL): its lease runs out, the
/// members join again through the other node, which claims the channel
/// with a newer epoch, and the listener hears the speaker again within a
/// few seconds.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_core_s_channel_comes_back_on_another_node() {
    use testkit::client::ClientSpec;
    let redis = Redis::start();
    let fleet = redis.server_fleet().await;
    let mut one = Node::start(&redis.url(), 1);
    let two = Node::start(&redis.url(), 2);
    eventually("two nodes registered", || async {
        fleet.nodes().await.is_ok_and(|n| n.len() == 2)
    })
    .await;
    let speak = ClientSpec::speaker(0);
    let listen = ClientSpec::listener();
    let (_s_ws, speaker) = join_until_joined(&one.base, "hall", "speaker", &speak).await;
    let (_l_ws, listener) = join_until_joined(&two.base, "hall", "listener", &listen).await;
    assert_eq!(
        fleet.lease("hall").await.unwrap(),
        Some(Lease { node: 1, epoch: 1 })
    );
    speaker.set_talking(true);
    assert!(common::hears(&listener, &[0], 25));

    binary::signal(&one.child, nix::sys::signal::Signal::SIGKILL);
    let _ = one.child.wait();
    let killed = Instant::now();
    // The members' clients see their sockets drop and join again through
    // the node that is left.
    let (_s_ws, speaker) = join_until_joined(&two.base, "hall", "speaker", &speak).await;
    let (_l_ws, listener) = join_until_joined(&two.base, "hall", "listener", &listen).await;
    speaker.set_talking(true);
    assert!(common::hears(&listener, &[0], 25));
    let back = listener.lock().first_heard(0, killed).expect("heard");
    let lease = fleet.lease("hall").await.unwrap().expect("claimed");
    assert_eq!(lease.node, 2);
    assert!(lease.epoch >= 2, "a newer epoch: {lease:?}");
    // The lease (2 s) bounds it; the rest is joining and ICE.
    let took = back - killed;
    eprintln!("failover: heard again {took:?} after the kill");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

/// Split brain: the core is paused (SIGSTOP) past its lease, another node
/// takes the channel with a newer epoch, and when the old core resumes it
/// finds it lost the channel: its members are sent to the new core and
/// their sessions end; the new core's lease is untouched.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_core_that_resumes_gives_its_channel_up() {
    use nix::sys::signal::Signal;
    use testkit::client::ClientSpec;
    let redis = Redis::start();
    let fleet = redis.server_fleet().await;
    let one = Node::start(&redis.url(), 1);
    let two = Node::start(&redis.url(), 2);
    eventually("two nodes registered", || async {
        fleet.nodes().await.is_ok_and(|n| n.len() == 2)
    })
    .await;
    let (_a_ws, alice) =
        join_until_joined(&one.base, "hall", "alice", &ClientSpec::speaker(0)).await;
    let (mut old_ws, old_ear) =
        join_until_joined(&one.base, "hall", "old", &ClientSpec::listener()).await;
    alice.set_talking(true);
    assert!(common::hears(&old_ear, &[0], 25));
    let first = fleet.lease("hall").await.unwrap().expect("claimed");
    assert_eq!(first.node, 1);

    binary::signal(&one.child, Signal::SIGSTOP);
    eventually("node 1's lease ran out", || async {
        fleet.lease("hall").await.is_ok_and(|l| l.is_none())
    })
    .await;
    let (_b_ws, bob) = join_until_joined(&two.base, "hall", "bob", &ClientSpec::speaker(1)).await;
    let (_n_ws, new_ear) =
        join_until_joined(&two.base, "hall", "new", &ClientSpec::listener()).await;
    let second = fleet.lease("hall").await.unwrap().expect("claimed");
    assert_eq!(second.node, 2);
    assert!(second.epoch > first.epoch);
    bob.set_talking(true);
    assert!(common::hears(&new_ear, &[1], 25));

    binary::signal(&one.child, Signal::SIGCONT);
    let moved = old_ws.recv_type("redirect").await;
    assert_eq!(moved["url"], two.base.as_str(), "{moved}");
    assert_eq!(moved["channel"], "hall");
    // The session ends after that message.
    let until = tokio::time::Instant::now() + LIMIT;
    loop {
        use futures_util::StreamExt;
        match tokio::time::timeout_at(until, old_ws.socket.next()).await {
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(m))) if m.is_close() => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("node 1 kept the session"),
        }
    }
    assert_eq!(fleet.lease("hall").await.unwrap(), Some(second));
    // Node 1 is back in the registry, serving nothing of "hall".
    eventually("node 1 registered again", || async {
        fleet.nodes().await.is_ok_and(|n| n.len() == 2)
    })
    .await;
    let (_x_ws, _late, _, to) =
        join_through(&one.base, &[], "hall", "late", ClientSpec::listener()).await;
    assert_eq!(to.as_deref(), Some(two.base.as_str()));
}

/// Redis's commands processed so far.
fn redis_commands(redis: &Redis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut redis.raw())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats")
}

/// Figures for BENCHMARKS.md, not a check (`scripts/fleet-bench.sh` runs
/// it): Redis commands per node per second at idle and while members join
/// and leave, and the time from opening a WebSocket to `joined` for a join
/// the node serves and for one it redirects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/fleet-bench.sh"]
async fn bench_fleet_redis_load_and_placement_latency() {
    use testkit::client::ClientSpec;
    let redis = Redis::start();
    let (_servers, base, _fleet) = fleet_of(&redis, &["default", "default"]).await;
    let window = Duration::from_secs(5);
    let rate = |before: u64, after: u64, took: Duration| {
        (after - before) as f64 / took.as_secs_f64() / 2.0
    };

    let (start, t0) = (redis_commands(&redis), Instant::now());
    tokio::time::sleep(window).await;
    let idle = rate(start, redis_commands(&redis), t0.elapsed());

    // 20 channels, each with a member held on node 1 (so that node 1 holds
    // 20 leases), then joins: direct to node 1, and through node 2.
    let mut held = Vec::new();
    for c in 0..20 {
        let (ws, peer, _, _) =
            join_through(&base[0], &[], &format!("c{c}"), "m", ClientSpec::listener()).await;
        held.push((ws, peer));
    }
    let (start, t0) = (redis_commands(&redis), Instant::now());
    tokio::time::sleep(window).await;
    let holding = rate(start, redis_commands(&redis), t0.elapsed());

    let (start, t0) = (redis_commands(&redis), Instant::now());
    let (mut direct, mut redirected) = (Vec::new(), Vec::new());
    for i in 0..20 {
        for (at, times) in [(&base[0], &mut direct), (&base[1], &mut redirected)] {
            let asked = Instant::now();
            let (ws, peer, _, _) =
                join_through(at, &[], &format!("c{i}"), "churn", ClientSpec::listener()).await;
            times.push(asked.elapsed());
            drop((ws, peer));
        }
    }
    let churn = rate(start, redis_commands(&redis), t0.elapsed());
    let churn_secs = t0.elapsed().as_secs_f64();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.raw())
        .unwrap();
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        eprintln!("fleet-bench: {line}");
    }
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "fleet-bench: redis commands per node per second: idle {idle:.1}, holding 20 channels {holding:.1}, \
         40 joins and leaves in {churn_secs:.1} s {churn:.1}"
    );
    eprintln!(
        "fleet-bench: websocket open -> joined, p50 (max) of 20: served {:?} ({:?}), redirected {:?} ({:?})",
        p50(&mut direct),
        direct[direct.len() - 1],
        p50(&mut redirected),
        redirected[redirected.len() - 1]
    );
}

/// When `listener` heard tone 0 again after `at` (+ `after`, past the
/// frames in flight), steadily (a second of it), and the longest silence
/// in it from half a second before `at` to that second's end.
fn heard_again(
    listener: &testkit::udp::UdpPeer,
    at: Instant,
    after: Duration,
) -> (Instant, Duration) {
    let from = at + after;
    let back = listener
        .wait_until(at + LIMIT, |c| c.first_heard(0, from).is_some())
        .then(|| listener.lock().first_heard(0, from))
        .flatten()
        .expect("the listener hears the speaker again");
    let second = back + Duration::from_secs(1);
    assert!(
        listener.wait_until(second + LIMIT, |c| c
            .tones_heard(back, second, 40)
            .contains(&0)),
        "heard steadily again, not a stray frame"
    );
    let gap = longest_silence(listener, 0, at - Duration::from_millis(500), second);
    (back, gap)
}

/// Nothing asked the member on `ws` to move or join again, and its
/// session goes on.
async fn undisturbed(ws: &mut common::Ws) {
    let (said, open) = ws.pending(Duration::from_millis(200)).await;
    assert!(open, "the session goes on");
    assert!(
        said.iter()
            .all(|m| !["redirect", "error", "shutdown", "joined"]
                .contains(&m["type"].as_str().unwrap_or(""))),
        "{said:?}"
    );
}

/// The longest stretch in `[from, to)` in which `peer` received no frame
/// of `tone`.
fn longest_silence(
    peer: &testkit::udp::UdpPeer,
    tone: usize,
    from: Instant,
    to: Instant,
) -> Duration {
    let client = peer.lock();
    let mut heard: Vec<Instant> = Vec::new();
    let mut at = from;
    while let Some(next) = client.first_heard(tone, at).filter(|t| *t < to) {
        heard.push(next);
        at = next + Duration::from_nanos(1);
    }
    let mut edges = vec![from];
    edges.extend(heard);
    edges.push(to);
    edges
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// The user's region from a token claim wins over the load balancer's
/// header: a first member whose token says "us", coming in through the eu
/// node with an eu header, makes the us node the channel's core; a token
/// with a region that is not a name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_s_region_claim_places_the_channel() {
    use sfu_server::auth::{mint, Grants};
    const SECRET: &str = "the-fleet-test-auth-secret-of-32-bytes";
    let redis = Redis::start();
    let (_servers, base, fleet) = fleet_with(&redis, &["eu", "us"], |c| {
        c.auth_secret = Some(SECRET.into());
    })
    .await;
    let token = |region: &str| {
        mint(
            SECRET.as_bytes(),
            &Grants {
                sub: "ann".into(),
                channel: "hall".into(),
                can_publish: true,
                can_subscribe: true,
                can_moderate: false,
                exp: 4_000_000_000,
                jti: None,
                region: Some(region.into()),
                p2p: None,
            },
        )
    };
    let join = |region: &str| {
        let (base, token) = (base[0].clone(), token(region));
        async move {
            let mut ws = common::Ws::connect_with(&base, &[("x-region", "eu")]).await;
            let (_peer, offer) =
                testkit::udp::UdpPeer::new("ann", &testkit::client::ClientSpec::listener())
                    .unwrap();
            ws.send(serde_json::json!({
                "type": "join", "channel": "hall", "offer": offer, "token": token
            }))
            .await;
            ws.recv().await
        }
    };
    let reply = join("us").await;
    assert_eq!(reply["type"], "redirect", "{reply}");
    assert_eq!(reply["url"], base[1].as_str(), "the token's region, us");
    assert_eq!(fleet.lease("hall").await.unwrap().map(|l| l.node), Some(2));
    let reply = join("u s").await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("region"),
        "{reply}"
    );
}

/// Regional edges: once a channel has more members at its core than
/// `edge_after`, members joining from another region are served by a node
/// of theirs, which follows the core over the cascade: a listener there
/// hears the core's speaker, a speaker there is heard at the core and at
/// the other edge, and the core keeps the channel's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_channel_s_members_from_other_regions_land_on_their_edges() {
    use testkit::client::ClientSpec;
    let redis = Redis::start();
    let (servers, base, fleet) = fleet_with_edges(&redis, &["eu", "us", "us"], 1).await;
    let eu = [("x-region", "eu")];
    let us = [("x-region", "us")];
    let (_a_ws, alice, _, to) =
        join_through(&base[1], &eu, "hall", "alice", ClientSpec::speaker(0)).await;
    assert_eq!(to.as_deref(), Some(base[0].as_str()), "the core, in eu");
    // Small: a member from us goes to the core too.
    let (_b_ws, bob, _, to) =
        join_through(&base[1], &us, "hall", "bob", ClientSpec::listener()).await;
    assert_eq!(
        to.as_deref(),
        Some(base[0].as_str()),
        "one member: no edges yet"
    );
    // Two members at the core: past edge_after, the core marks the channel.
    marked_big(&fleet).await;
    // Carol (us) comes in through the core: sent to a us node, the least
    // loaded; Dave (us) comes in through node 3, which serves him itself.
    let (_c_ws, carol, _, to) =
        join_through(&base[0], &us, "hall", "carol", ClientSpec::listener()).await;
    assert_eq!(
        to.as_deref(),
        Some(base[1].as_str()),
        "us' least-loaded node"
    );
    let (_d_ws, dave, _, to) =
        join_through(&base[2], &us, "hall", "dave", ClientSpec::speaker(1)).await;
    assert_eq!(to, None, "node 3 is an edge of us itself");
    // A joiner from eu still goes to the core.
    let (_e_ws, _erin, _, to) =
        join_through(&base[2], &eu, "hall", "erin", ClientSpec::listener()).await;
    assert_eq!(to.as_deref(), Some(base[0].as_str()));

    alice.set_talking(true);
    dave.set_talking(true);
    assert!(
        common::hears(&carol, &[0, 1], 25),
        "carol (edge 2) hears alice (core) and dave (edge 3)"
    );
    assert!(common::hears(&bob, &[0, 1], 25), "bob (core) hears both");
    assert!(common::hears(&alice, &[1], 25), "alice hears dave");
    assert_eq!(
        fleet.lease("hall").await.unwrap().map(|l| l.node),
        Some(1),
        "the core keeps the channel"
    );
    // The edges carry their members and a link each; the core counts both
    // links.
    let links = |s: &sfu_server::Server| {
        let s = s.state().clone();
        async move { s.snapshot().await.links }
    };
    assert_eq!(
        links(&servers[0]).await,
        2,
        "the core: a link from each edge"
    );
    assert_eq!(links(&servers[1]).await, 1);
    assert_eq!(links(&servers[2]).await, 1);
    let gauge = |i: usize, name: &'static str| {
        let base = base[i].clone();
        async move { common::value(&common::scrape(&base).await, name, None) }
    };
    eventually("the edges count the channel they serve", || async {
        gauge(1, "sfu_fleet_edge_channels").await == 1.0
            && gauge(2, "sfu_fleet_edge_channels").await == 1.0
    })
    .await;
    assert_eq!(gauge(0, "sfu_fleet_core_channels").await, 1.0);
    assert_eq!(gauge(0, "sfu_fleet_edge_channels").await, 0.0);
    assert_eq!(gauge(1, "sfu_fleet_core_channels").await, 0.0);
}

/// Failover with edges: a core and two edges in three regions, a speaker
/// on one edge and a listener on the other. The core is killed (SIGKILL):
/// its lease runs out, one edge claims the channel with a newer epoch and
/// the other follows it; the listener hears the speaker again within 3 s,
/// in the same session (no join, no renegotiation). Then the edge that is
/// not the core is killed: its member joins again through any node and
/// hears again.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_core_s_edges_carry_on_without_renegotiating() {
    use testkit::client::ClientSpec;
    let redis = Redis::start();
    let fleet = redis.server_fleet().await;
    let node = |id: u16, region: &str| {
        Node::start_with(
            &redis.url(),
            id,
            &[
                "--region",
                region,
                "--region-header",
                "x-region",
                "--edge-after",
                "1",
                "--cluster-listen",
                "127.0.0.1:0",
                "--cluster-secret",
                common::CLUSTER_SECRET,
            ],
        )
    };
    let mut nodes = vec![node(1, "eu"), node(2, "us"), node(3, "ap")];
    eventually("three nodes registered", || async {
        fleet.nodes().await.is_ok_and(|n| n.len() == 3)
    })
    .await;
    let BigHall {
        _hosts,
        speaker: _speaker,
        listener: (mut l_ws, listener),
    } = big_hall(&fleet, &nodes[0].base, [&nodes[1].base, &nodes[2].base]).await;
    assert_eq!(fleet.lease("hall").await.unwrap().map(|l| l.node), Some(1));

    binary::signal(&nodes[0].child, nix::sys::signal::Signal::SIGKILL);
    let _ = nodes[0].child.wait();
    let killed = Instant::now();
    let (back, gap) = heard_again(&listener, killed, Duration::from_millis(300));
    eprintln!("edge failover: the listener heard the speaker again {:?} after the kill (longest silence {gap:?})", back - killed);
    assert!(gap < Duration::from_secs(3), "silent for {gap:?}");
    let lease = fleet.lease("hall").await.unwrap().expect("claimed");
    assert!(
        lease.node == 2 || lease.node == 3,
        "an edge took over: {lease:?}"
    );
    assert!(lease.epoch >= 2, "a newer epoch: {lease:?}");
    let (core, edge) = if lease.node == 2 { (1, 2) } else { (2, 1) };
    let counter = |i: usize, name: &'static str| {
        let base = nodes[i].base.clone();
        async move { common::value(&common::scrape(&base).await, name, None) }
    };
    assert_eq!(counter(core, "sfu_fleet_takeovers_total").await, 1.0);
    assert_eq!(counter(edge, "sfu_fleet_rehomes_total").await, 1.0);
    assert_eq!(counter(edge, "sfu_fleet_takeovers_total").await, 0.0);
    // The same session: nothing asked the listener to move or join again.
    undisturbed(&mut l_ws).await;

    // Kill the edge that is not the core: its member comes back through
    // the core.
    binary::signal(&nodes[edge].child, nix::sys::signal::Signal::SIGKILL);
    let _ = nodes[edge].child.wait();
    let region = if edge == 1 { "us" } else { "ap" };
    let spec = if edge == 1 {
        ClientSpec::speaker(0)
    } else {
        ClientSpec::listener()
    };
    let (_ws, again) = join_from_until_joined(
        &nodes[core].base,
        &[("x-region", region)],
        "hall",
        "again",
        &spec,
    )
    .await;
    if edge == 1 {
        again.set_talking(true);
        assert!(
            common::hears(&listener, &[0], 25),
            "the speaker is heard again"
        );
    } else {
        assert!(common::hears(&again, &[0], 25), "the listener hears again");
    }
    drop(nodes);
}

/// A draining core hands its big channel over: it releases the lease, an
/// edge claims it and the other follows, and a listener on an edge hears
/// the speaker on the other edge again well before a dead core's lease
/// would have run out, in the same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_core_hands_its_channel_to_an_edge() {
    let redis = Redis::start();
    let (mut servers, base, fleet) = fleet_with_edges(&redis, &["eu", "us", "ap"], 1).await;
    let BigHall {
        _hosts,
        speaker: _speaker,
        listener: (mut l_ws, listener),
    } = big_hall(&fleet, &base[0], [&base[1], &base[2]]).await;

    let core = servers.remove(0);
    let drained = Instant::now();
    core.drain(Duration::from_millis(200)).await;
    let (_, gap) = heard_again(&listener, drained, Duration::from_millis(500));
    eprintln!("drain handover: longest silence {gap:?}");
    assert!(gap < Duration::from_millis(1500), "silent for {gap:?}");
    let lease = fleet.lease("hall").await.unwrap().expect("claimed");
    assert!(
        lease.node == 2 || lease.node == 3,
        "an edge holds it: {lease:?}"
    );
    undisturbed(&mut l_ws).await;
}

/// The members of [`big_hall`]: the core's two (eu), a speaker on the us
/// edge and a listener on the ap edge (each a socket and a peer).
struct BigHall {
    _hosts: Vec<(common::Ws, testkit::udp::UdpPeer)>,
    speaker: (common::Ws, testkit::udp::UdpPeer),
    listener: (common::Ws, testkit::udp::UdpPeer),
}

/// Makes "hall" big on the node at `core` (eu, two members: past
/// `edge_after` 1), then sends a speaker from us and a listener from ap
/// through the core to `edges` (the us node, the ap node); returns once the
/// listener hears the speaker (through the core).
async fn big_hall(fleet: &RedisFleet, core: &str, edges: [&str; 2]) -> BigHall {
    use testkit::client::ClientSpec;
    let mut hosts = Vec::new();
    for name in ["host", "cohost"] {
        let (ws, peer, _, to) = join_through(
            core,
            &[("x-region", "eu")],
            "hall",
            name,
            ClientSpec::listener(),
        )
        .await;
        assert_eq!(to, None, "the core serves its region");
        hosts.push((ws, peer));
    }
    marked_big(fleet).await;
    let mut members = Vec::new();
    for ((name, region, spec), edge) in [
        ("speaker", "us", ClientSpec::speaker(0)),
        ("listener", "ap", ClientSpec::listener()),
    ]
    .into_iter()
    .zip(edges)
    {
        let (ws, peer, _, to) =
            join_through(core, &[("x-region", region)], "hall", name, spec).await;
        assert_eq!(to.as_deref(), Some(edge), "{name}: the {region} edge");
        members.push((ws, peer));
    }
    let listener = members.pop().expect("listener");
    let speaker = members.pop().expect("speaker");
    speaker.1.set_talking(true);
    assert!(common::hears(&listener.1, &[0], 25), "through the core");
    BigHall {
        _hosts: hosts,
        speaker,
        listener,
    }
}

/// Waits until the core of "hall" marks it big enough for edges.
async fn marked_big(fleet: &RedisFleet) {
    eventually("the core marks the channel for edges", || async {
        fleet
            .lease_and_fanout("hall")
            .await
            .is_ok_and(|(_, big)| big)
    })
    .await;
}
