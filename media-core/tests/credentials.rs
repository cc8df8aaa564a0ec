//! Where an engine's ICE credentials and voice ids come from: credentials
//! from its seeded ChaCha20 generator alone, voice ids from its engine
//! number and the order of joins alone, so a voice id (which every member of
//! a channel sees) tells nothing about anyone's credentials.

use std::collections::HashSet;
use std::time::Instant;

use media_core::{Engine, EngineConfig, EngineId};
use testkit::answers::{join_many, Answered};

fn engine(seed: [u8; 32], number: u16, now: Instant) -> Engine {
    let config = EngineConfig {
        engine_id: EngineId::new(number).unwrap(),
        ..EngineConfig::new(seed)
    };
    Engine::new(config, now)
}

fn joins(seed: [u8; 32], number: u16, n: usize) -> Vec<Answered> {
    let now = testkit::epoch();
    join_many(&mut engine(seed, number, now), 1, n, now)
}

/// Two engines with different seeds give out the same voice ids (nothing of
/// their generators is in them) and no common credential; the same seed
/// replays the same credentials (tests stay deterministic).
#[test]
fn voice_ids_follow_the_engine_number_and_credentials_the_seed() {
    let mut other = testkit::SEED;
    other[0] ^= 1;
    let a = joins(testkit::SEED, 0, 200);
    let b = joins(other, 0, 200);
    let ids = |v: &[Answered]| v.iter().map(|x| x.source).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    let secrets = |v: &[Answered]| {
        v.iter()
            .flat_map(|x| [x.ice_ufrag.clone(), x.ice_pwd.clone()])
            .collect::<HashSet<String>>()
    };
    assert_eq!(secrets(&a).len(), 400, "every ufrag and password distinct");
    assert!(secrets(&a).is_disjoint(&secrets(&b)));
    assert_eq!(joins(testkit::SEED, 0, 200), a);
}

/// Two engines sharing a seed (a configuration copied between nodes) but
/// with their own engine numbers never give out the same voice id.
#[test]
fn engines_with_one_seed_and_their_own_numbers_never_share_a_voice_id() {
    let a = joins(testkit::SEED, 1, 300);
    let b = joins(testkit::SEED, 2, 300);
    let ids_a: HashSet<_> = a.iter().map(|x| x.source).collect();
    let ids_b: HashSet<_> = b.iter().map(|x| x.source).collect();
    assert_eq!((ids_a.len(), ids_b.len()), (300, 300));
    assert!(ids_a.is_disjoint(&ids_b));
    assert!(a.iter().all(|x| x.source.engine().get() == 1));
}
