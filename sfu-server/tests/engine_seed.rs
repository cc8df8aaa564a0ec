//! The server's engines, as an attacker who sees voice ids and knows when
//! and as which process the server started: each engine's generator is keyed
//! from the operating system, so two engines built the way the server builds
//! them hand out unrelated ICE credentials, and their voice ids (visible to
//! every member of a channel) carry nothing of either generator.

use std::collections::HashSet;

use media_core::Engine;
use sfu_server::server::engine_config;
use sfu_server::Config;
use testkit::answers::join_many;

#[test]
fn two_engines_built_as_the_server_builds_them_share_no_credentials() {
    // The same process, the same second, the same configuration: all an
    // attacker could guess of a seed derived from the time and the pid.
    let config = Config::default();
    let (a, b) = (
        engine_config(&config, 0).unwrap(),
        engine_config(&config, 0).unwrap(),
    );
    assert_ne!(a.seed, b.seed);
    let now = testkit::epoch();
    let a = join_many(&mut Engine::new(a, now), 1, 1000, now);
    let b = join_many(&mut Engine::new(b, now), 1, 1000, now);

    let mut secrets = HashSet::new();
    for x in a.iter().chain(&b) {
        assert!(secrets.insert(x.ice_ufrag.clone()), "ufrag given out twice");
        assert!(
            secrets.insert(x.ice_pwd.clone()),
            "password given out twice"
        );
    }
    // Both engines are node 0: the same ids, whatever their generators did,
    // so an id cannot reveal anything of the credentials given out with it.
    let ids = |v: &[testkit::answers::Answered]| v.iter().map(|x| x.source).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
}

#[test]
fn the_engine_number_is_the_node_id_times_the_workers_plus_the_worker() {
    let one = Config {
        node_id: Some(42),
        workers: 1,
        ..Config::default()
    };
    assert_eq!(engine_config(&one, 0).unwrap().engine_id.get(), 42);
    let four = Config {
        workers: 4,
        ..one.clone()
    };
    let numbers: Vec<u16> = (0..4)
        .map(|w| engine_config(&four, w).unwrap().engine_id.get())
        .collect();
    assert_eq!(numbers, [168, 169, 170, 171]);
    let past = Config {
        node_id: Some(5000),
        ..one
    };
    assert!(engine_config(&past, 0).is_err());
    let past = Config {
        node_id: Some(1024),
        workers: 4,
        ..Config::default()
    };
    assert!(
        engine_config(&past, 3).is_err(),
        "1024 × 4 + 3 is above 4095"
    );
    assert!(past.validate().is_err());
}
