//! The configuration's loading and checks, unit-tested.
use super::*;
use std::collections::HashMap;

/// A secret of the shortest length accepted.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sfu-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn defaults_validate() {
    let config = Config::load(None, &no_env, &Overrides::default()).unwrap();
    assert_eq!(config, Config::default());
    config.validate().unwrap();
    assert!(config.dev_mode());
    assert_eq!(config.http, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.udp, "127.0.0.1:0".parse().unwrap());
    assert_eq!(config.slots, 3);
    assert_eq!(config.turn_ttl_secs, 600);
    assert_eq!(config.drain_timeout_secs, 30);
    assert_eq!(config.max_body_bytes, 65_536);
    assert_eq!(config.log, "info,str0m=error");
}

#[test]
fn toml_overrides_defaults() {
    let path = temp_file(
        "ok.toml",
        r#"
http = "127.0.0.1:9000"
auth_secret = "s3cret-s3cret-s3cret-s3cret-s3cret"
slots = 5
stun_urls = ["stun:stun.example.org:3478"]
turn_urls = ["turn:turn.example.org:3478?transport=udp"]
turn_secret = "t-t-t-t-t-t-t-t-t-t-t-t-t-t-t-t-t"
"#,
    );
    let config = Config::load(Some(&path), &no_env, &Overrides::default()).unwrap();
    assert_eq!(config.http, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(
        config.auth_secret.as_deref(),
        Some("s3cret-s3cret-s3cret-s3cret-s3cret")
    );
    assert_eq!(config.slots, 5);
    assert_eq!(config.stun_urls, ["stun:stun.example.org:3478"]);
    assert_eq!(
        config.turn_secret.as_deref(),
        Some("t-t-t-t-t-t-t-t-t-t-t-t-t-t-t-t-t")
    );
    // Untouched keys keep their defaults.
    assert_eq!(config.udp, Config::default().udp);
    assert_eq!(config.log, "info,str0m=error");
    config.validate().unwrap();
    assert!(!config.dev_mode());
}

#[test]
fn unknown_toml_key_is_named() {
    let path = temp_file("unknown.toml", "slots = 3\nbogus_key = 1\n");
    let err = Config::load(Some(&path), &no_env, &Overrides::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("bogus_key"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn bad_toml_and_missing_file_are_errors() {
    let path = temp_file("bad.toml", "slots = \"three\"\n");
    let err = Config::load(Some(&path), &no_env, &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("slots"), "{err}");
    let path = temp_file("syntax.toml", "http = \n[[[");
    assert!(Config::load(Some(&path), &no_env, &Overrides::default()).is_err());
    let missing = Path::new("/nonexistent/sfu.toml");
    let err = Config::load(Some(missing), &no_env, &Overrides::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/sfu.toml"), "{err}");
}

#[test]
fn env_overrides_file() {
    let path = temp_file("env.toml", "slots = 5\nlog = \"debug\"\n");
    let env = env_of(&[
        ("SFU_SLOTS", "7"),
        ("SFU_HTTP", "127.0.0.1:1234"),
        ("SFU_STUN_URLS", "stun:a:3478, stun:b:3478,"),
        ("SFU_INSECURE", "true"),
        ("SFU_TURN_TTL_SECS", "60"),
    ]);
    let config = Config::load(Some(&path), &env, &Overrides::default()).unwrap();
    assert_eq!(config.slots, 7);
    assert_eq!(config.log, "debug");
    assert_eq!(config.http, "127.0.0.1:1234".parse().unwrap());
    assert_eq!(config.stun_urls, ["stun:a:3478", "stun:b:3478"]);
    assert!(config.insecure);
    assert_eq!(config.turn_ttl_secs, 60);
}

#[test]
fn cli_overrides_env() {
    let env = env_of(&[
        ("SFU_SLOTS", "7"),
        ("SFU_LOG", "warn"),
        ("SFU_AUTH_SECRET", "from-env"),
    ]);
    let overrides = Overrides {
        slots: Some(2),
        log: Some("trace".into()),
        auth_secret: Some("from-cli".into()),
        http: Some("127.0.0.1:1".parse().unwrap()),
        ..Overrides::default()
    };
    let config = Config::load(None, &env, &overrides).unwrap();
    assert_eq!(config.slots, 2);
    assert_eq!(config.log, "trace");
    assert_eq!(config.auth_secret.as_deref(), Some("from-cli"));
    assert_eq!(config.http, "127.0.0.1:1".parse().unwrap());
}

#[test]
fn unspecified_address_without_secret_is_refused() {
    let overrides = Overrides {
        http: Some("0.0.0.0:8080".parse().unwrap()),
        ..Overrides::default()
    };
    let config = Config::load(None, &no_env, &overrides).unwrap();
    let err = config.validate().unwrap_err();
    assert!(matches!(
        err,
        ConfigError::UnsafeBinding { what: "HTTP", .. }
    ));
    assert!(err.to_string().contains("--insecure"), "{err}");

    let udp = Config {
        udp: "[::]:0".parse().unwrap(),
        ..Config::default()
    };
    assert!(matches!(
        udp.validate(),
        Err(ConfigError::UnsafeBinding { what: "UDP", .. })
    ));
    // IPv6 loopback and IPv4-mapped loopback are loopback.
    let v6 = Config {
        http: "[::1]:8080".parse().unwrap(),
        udp: "[::ffff:127.0.0.1]:0".parse().unwrap(),
        ..Config::default()
    };
    v6.validate().unwrap();
}

#[test]
fn insecure_or_secret_allows_public_binding() {
    let overrides = Overrides {
        http: Some("0.0.0.0:8080".parse().unwrap()),
        insecure: true,
        ..Overrides::default()
    };
    Config::load(None, &no_env, &overrides)
        .unwrap()
        .validate()
        .unwrap();
    let env = env_of(&[("SFU_HTTP", "0.0.0.0:8080"), ("SFU_AUTH_SECRET", SECRET)]);
    Config::load(None, &env, &Overrides::default())
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn bad_env_value_is_a_clear_error() {
    let env = env_of(&[("SFU_SLOTS", "abc")]);
    let err = Config::load(None, &env, &Overrides::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("SFU_SLOTS"), "{msg}");
    assert!(msg.contains("abc"), "{msg}");
    assert!(msg.contains("invalid digit"), "{msg}");
    for (name, value) in [
        ("SFU_HTTP", "localhost"),
        ("SFU_UDP", "1.2.3.4"),
        ("SFU_INSECURE", "maybe"),
        ("SFU_TURN_TTL_SECS", "-1"),
        ("SFU_MAX_BODY_BYTES", "1e6"),
        ("SFU_DRAIN_TIMEOUT_SECS", ""),
    ] {
        let env = env_of(&[(name, value)]);
        let err = Config::load(None, &env, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn other_refusals() {
    let check = |config: Config, needle: &str| {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err} lacks {needle}");
    };
    check(
        Config {
            slots: 0,
            ..Config::default()
        },
        "slots",
    );
    check(
        Config {
            slots: 33,
            ..Config::default()
        },
        "slots",
    );
    Config {
        slots: 32,
        ..Config::default()
    }
    .validate()
    .unwrap();
    check(
        Config {
            auth_secret: Some(String::new()),
            ..Config::default()
        },
        "auth_secret",
    );
    check(
        Config {
            turn_urls: vec!["turn:t:3478".into()],
            ..Config::default()
        },
        "turn_secret",
    );
    check(
        Config {
            stun_urls: vec!["http://x".into()],
            ..Config::default()
        },
        "stun_urls",
    );
    check(
        Config {
            turn_urls: vec!["turn:t:3478>; rel=x".into()],
            turn_secret: Some(SECRET.into()),
            ..Config::default()
        },
        "turn_urls",
    );
    check(
        Config {
            log: "info,[[[".into(),
            ..Config::default()
        },
        "log",
    );
}

/// Secrets an offline guess could find are refused with a way to make a
/// good one; 32 bytes pass.
#[test]
fn short_secrets_are_refused() {
    let short = "a".repeat(MIN_SECRET_BYTES - 1);
    for (field, config) in [
        (
            "auth_secret",
            Config {
                auth_secret: Some(short.clone()),
                ..Config::default()
            },
        ),
        (
            "turn_secret",
            Config {
                turn_secret: Some(short.clone()),
                turn_urls: vec!["turn:t:3478".into()],
                ..Config::default()
            },
        ),
        (
            "cluster_secret",
            Config {
                cluster_secret: Some(short.clone()),
                role: NodeRole::Core,
                node_id: Some(1),
                ..Config::default()
            },
        ),
    ] {
        let err = config.validate().unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { field: f, .. } if f == field),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("head -c 32 /dev/urandom | base64"), "{text}");
        assert!(text.contains("31 bytes"), "{text}");
    }
    Config {
        auth_secret: Some(SECRET.into()),
        turn_secret: Some(SECRET.into()),
        turn_urls: vec!["turn:t:3478".into()],
        cluster_secret: Some(SECRET.into()),
        role: NodeRole::Core,
        node_id: Some(1),
        ..Config::default()
    }
    .validate()
    .unwrap();
}

#[test]
fn limits_are_checked_and_read_from_the_environment() {
    let env = env_of(&[
        ("SFU_MAX_MEMBERS_PER_CHANNEL", "7"),
        ("SFU_MAX_CHANNELS", "8"),
        ("SFU_JOINS_PER_TOKEN_PER_MINUTE", "0"),
        ("SFU_JOINS_PER_IP_PER_MINUTE", "9"),
        ("SFU_MAX_HTTP_CONNECTIONS", "10"),
        ("SFU_MAX_WS_CONNECTIONS", "11"),
        ("SFU_HTTP_HEADER_TIMEOUT_SECS", "12"),
        ("SFU_WS_JOIN_TIMEOUT_SECS", "13"),
        ("SFU_WS_MAX_MESSAGE_BYTES", "16384"),
        ("SFU_ICE_RESTARTS_PER_MINUTE", "14"),
        ("SFU_RESUME_GRACE_SECS", "15"),
        (
            "SFU_ALLOWED_ORIGINS",
            "https://app.example.org, http://127.0.0.1:3000",
        ),
        ("SFU_DEV_MODERATION", "yes"),
    ]);
    let c = Config::load(None, &env, &Overrides::default()).unwrap();
    c.validate().unwrap();
    assert_eq!(
        (
            c.max_members_per_channel,
            c.max_channels,
            c.joins_per_token_per_minute,
            c.joins_per_ip_per_minute,
            c.max_http_connections,
            c.max_ws_connections,
            c.http_header_timeout_secs,
            c.ws_join_timeout_secs,
            c.ws_max_message_bytes,
            c.ice_restarts_per_minute,
            c.resume_grace_secs,
        ),
        (7, 8, 0, 9, 10, 11, 12, 13, 16384, 14, 15)
    );
    assert_eq!(
        c.allowed_origins,
        ["https://app.example.org", "http://127.0.0.1:3000"]
    );
    assert!(c.dev_moderation);
    let check = |config: Config, needle: &str| {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err} lacks {needle}");
    };
    check(
        Config {
            max_channels: 0,
            ..Config::default()
        },
        "max_channels",
    );
    check(
        Config {
            http_header_timeout_secs: 0,
            ..Config::default()
        },
        "http_header_timeout_secs",
    );
    check(
        Config {
            ws_max_message_bytes: 100,
            ..Config::default()
        },
        "ws_max_message_bytes",
    );
    for bad in ["app.example.org", "https://app.example.org/path", "*", ""] {
        check(
            Config {
                allowed_origins: vec![bad.into()],
                ..Config::default()
            },
            "allowed_origins",
        );
    }
}

/// Workers: 0 is one per core on a standalone node and one on a cluster
/// node; several on a cluster node, too many, engine numbers or ports
/// past their range are refused with the key named; the environment and
/// the flag set it; worker `w` binds the configured port + `w`.
#[test]
fn workers_resolve_and_are_checked() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(Config::default().worker_count(), cores.min(MAX_WORKERS));
    let core = Config {
        role: NodeRole::Core,
        node_id: Some(7),
        cluster_secret: Some("c".repeat(32)),
        ..Config::default()
    };
    assert_eq!(core.worker_count(), 1);
    core.validate().unwrap();
    let refused = |c: Config, needle: &str| {
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("workers") && err.contains(needle), "{err}");
    };
    refused(Config { workers: 2, ..core }, "one media worker");
    refused(
        Config {
            workers: MAX_WORKERS + 1,
            ..Config::default()
        },
        "above",
    );
    refused(
        Config {
            workers: 16,
            node_id: Some(256),
            ..Config::default()
        },
        "4095",
    );
    refused(
        Config {
            workers: 4,
            udp: "127.0.0.1:65534".parse().unwrap(),
            ..Config::default()
        },
        "65535",
    );
    let fixed = Config {
        workers: 3,
        udp: "127.0.0.1:40000".parse().unwrap(),
        ..Config::default()
    };
    fixed.validate().unwrap();
    assert_eq!(fixed.worker_udp(2), "127.0.0.1:40002".parse().unwrap());
    assert_eq!(Config::default().worker_udp(5).port(), 0, "any free port");

    let env = |k: &str| match k {
        "SFU_WORKERS" => Some("3".to_owned()),
        "SFU_PIN_WORKERS" => Some("true".to_owned()),
        _ => None,
    };
    let c = Config::load(None, &env, &Overrides::default()).unwrap();
    assert_eq!((c.workers, c.pin_workers), (3, true));
    let flag = Overrides {
        workers: Some(5),
        ..Overrides::default()
    };
    assert_eq!(Config::load(None, &env, &flag).unwrap().worker_count(), 5);
    let bad = |k: &str| (k == "SFU_WORKERS").then(|| "many".to_owned());
    assert!(Config::load(None, &bad, &Overrides::default()).is_err());
}

/// The fleet's keys: a Redis URL needs a node id and the redis://
/// scheme, a region is a short plain name, a public URL is http(s); the
/// password in a Redis URL never reaches a log line.
#[test]
fn fleet_settings_are_checked_and_the_redis_password_redacted() {
    let fleet = Config {
        redis_url: Some("redis://:hunter2-long-password@10.0.0.5:6379/0".into()),
        node_id: Some(3),
        region: "eu-west".into(),
        public_url: Some("https://sfu-3.example.org".into()),
        ..Config::default()
    };
    fleet.validate().unwrap();
    let shown = format!("{fleet:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("redis://<redacted>@10.0.0.5:6379/0"),
        "{shown}"
    );
    let refused = |c: Config, field: &str| {
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    };
    refused(
        Config {
            node_id: None,
            ..fleet.clone()
        },
        "node_id",
    );
    refused(
        Config {
            redis_url: Some("http://10.0.0.5".into()),
            ..fleet.clone()
        },
        "redis_url",
    );
    refused(
        Config {
            role: NodeRole::Core,
            cluster_secret: Some("c".repeat(32)),
            ..fleet.clone()
        },
        "static cluster",
    );
    // Regional edges: nodes link to each other, authenticated, one worker.
    let edges = Config {
        edge_after: 100,
        cluster_secret: Some("c".repeat(32)),
        ..fleet.clone()
    };
    edges.validate().unwrap();
    assert!(edges.fleet_edges());
    assert_eq!(edges.worker_count(), 1, "one worker by default");
    refused(
        Config {
            cluster_secret: None,
            ..edges.clone()
        },
        "cluster_secret",
    );
    refused(
        Config {
            workers: 2,
            ..edges.clone()
        },
        "workers",
    );
    assert!(
        !Config {
            redis_url: None,
            ..edges.clone()
        }
        .fleet_edges(),
        "edges are a fleet's"
    );
    for bad in ["", "eu west", "eu/west", &"r".repeat(65)] {
        refused(
            Config {
                region: bad.into(),
                ..fleet.clone()
            },
            "region",
        );
    }
    refused(
        Config {
            public_url: Some("sfu-3.example.org".into()),
            ..fleet.clone()
        },
        "public_url",
    );
    let env = |k: &str| match k {
        "SFU_REDIS_URL" => Some("redis://127.0.0.1:6379/1".to_owned()),
        "SFU_REGION" => Some("us-east".to_owned()),
        "SFU_PUBLIC_URL" => Some("https://x.example.org".to_owned()),
        "SFU_EDGE_AFTER" => Some("250".to_owned()),
        "SFU_HALL_MODE" => Some("true".to_owned()),
        "SFU_SPREAD_AFTER" => Some("0".to_owned()),
        "SFU_CLUSTER_SECRET" => Some("s".repeat(32)),
        _ => None,
    };
    let c = Config::load(None, &env, &Overrides::default()).unwrap();
    assert_eq!(c.edge_after, 250);
    assert!(c.hall_mode);
    assert_eq!(c.spread_after, Some(0));
    assert_eq!(c.effective_spread_after(), 0);
    assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6379/1"));
    assert_eq!(c.region, "us-east");
    assert_eq!(c.public_url.as_deref(), Some("https://x.example.org"));
}

/// Node ids number the voices of a cluster: a core or edge must have its
/// own, in range; a standalone node needs none.
#[test]
fn cluster_nodes_need_a_node_id_in_range() {
    let core = Config {
        role: NodeRole::Core,
        cluster_secret: Some(SECRET.into()),
        ..Config::default()
    };
    let err = core.validate().unwrap_err().to_string();
    assert!(err.contains("node_id"), "{err}");
    let numbered = Config::load(
        None,
        &env_of(&[("SFU_NODE_ID", "4095")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(numbered.node_id, Some(4095));
    Config {
        node_id: numbered.node_id,
        ..core.clone()
    }
    .validate()
    .unwrap();
    let err = Config {
        node_id: Some(4096),
        ..core
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("node_id") && err.contains("4095"), "{err}");
    let flag = Overrides {
        node_id: Some(3),
        ..Overrides::default()
    };
    assert_eq!(Config::load(None, &no_env, &flag).unwrap().node_id, Some(3));
}

#[test]
fn debug_redacts_secrets() {
    let config = Config {
        auth_secret: Some("hunter2".into()),
        turn_secret: Some("hunter3".into()),
        ..Config::default()
    };
    let text = format!("{config:?}");
    assert!(!text.contains("hunter"), "{text}");
    assert!(text.contains("redacted"), "{text}");
    let o = Overrides {
        auth_secret: Some("hunter2".into()),
        ..Overrides::default()
    };
    assert!(!format!("{o:?}").contains("hunter"));
}

/// A node of several workers spreads a big channel by default (past
/// `DEFAULT_SPREAD_AFTER` members on its first worker); one worker or an
/// explicit 0 keeps a channel on one worker. With hybrid, a channel must be
/// on the SFU before it spreads: `spread_after` not above `p2p_max` is
/// refused.
#[test]
fn big_channels_spread_by_default_and_with_hybrid_only_past_p2p_max() {
    let two = Config {
        workers: 2,
        ..Config::default()
    };
    assert_eq!(
        two.effective_spread_after(),
        crate::config::DEFAULT_SPREAD_AFTER
    );
    let one = Config {
        workers: 1,
        spread_after: Some(50),
        ..Config::default()
    };
    assert_eq!(
        one.effective_spread_after(),
        0,
        "one worker: nowhere to spread"
    );
    let never = Config {
        spread_after: Some(0),
        ..two.clone()
    };
    assert_eq!(never.effective_spread_after(), 0);
    let hybrid = Config {
        hybrid: true,
        ..two.clone()
    };
    assert_eq!(
        hybrid.effective_spread_after(),
        crate::config::DEFAULT_SPREAD_AFTER
    );
    hybrid.validate().unwrap();
    let early = Config {
        spread_after: Some(hybrid.p2p_max),
        ..hybrid.clone()
    };
    let err = early.validate().unwrap_err().to_string();
    assert!(
        err.contains("spread_after") && err.contains("p2p_max"),
        "{err}"
    );
    Config {
        spread_after: Some(hybrid.p2p_max + 1),
        ..hybrid
    }
    .validate()
    .unwrap();
}
