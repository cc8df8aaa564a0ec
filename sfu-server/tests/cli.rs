//! Runs the built `sfu-server` binary: token minting and configuration
//! refusals (not the running server).

mod binary;

use std::time::{SystemTime, UNIX_EPOCH};

use binary::{run, sfu_server};
use sfu_server::auth::{self, Grants};

/// Secrets of the shortest length the server accepts.
const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cr";
const ENV_SECRET: &str = "from-env-from-env-from-env-from-";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn token_prints_a_verifiable_token() {
    let out = run(sfu_server().args([
        "token",
        "--secret",
        SECRET,
        "--identity",
        "alice",
        "--channel",
        "lobby",
        "--publish",
        "--subscribe",
        "--ttl",
        "600",
    ]));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout:?}");
    let before = now();
    let grants = auth::verify(SECRET.as_bytes(), lines[0], before).unwrap();
    let exp = grants.exp;
    assert_eq!(
        grants,
        Grants {
            sub: "alice".into(),
            channel: "lobby".into(),
            can_publish: true,
            can_subscribe: true,
            can_moderate: false,
            exp,
            jti: None,
            region: None,
            p2p: None,
        }
    );
    assert!(exp > before + 500 && exp <= before + 600, "exp {exp}");
    assert_eq!(
        auth::verify(b"other", lines[0], before),
        Err(auth::AuthError::BadSignature)
    );
}

#[test]
fn token_reads_the_secret_from_the_environment() {
    let out = run(sfu_server().env("SFU_AUTH_SECRET", ENV_SECRET).args([
        "token",
        "--identity",
        "mod",
        "--channel",
        "*",
        "--moderate",
    ]));
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let grants = auth::verify(ENV_SECRET.as_bytes(), token.trim(), now()).unwrap();
    assert!(grants.can_moderate && !grants.can_publish && !grants.can_subscribe);
    assert!(grants.admits("anywhere"));
}

#[test]
fn token_refuses_an_empty_secret() {
    let out =
        run(sfu_server().args(["token", "--secret", "", "--identity", "a", "--channel", "c"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret"), "{stderr}");
}

/// A token signed with a secret the server would refuse is no use; the
/// refusal says how to make a good secret.
#[test]
fn token_refuses_a_short_secret() {
    let out = run(sfu_server().args([
        "token",
        "--secret",
        &SECRET[..31],
        "--identity",
        "a",
        "--channel",
        "c",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("head -c 32 /dev/urandom | base64"),
        "{stderr}"
    );
}

/// The server does not start with a short auth or cluster secret, and says
/// how to generate one.
#[test]
fn short_secrets_exit_2_with_how_to_make_one() {
    for (var, extra) in [
        ("SFU_AUTH_SECRET", &[][..]),
        (
            "SFU_CLUSTER_SECRET",
            &["--role", "core", "--node-id", "1"][..],
        ),
    ] {
        let out = run(sfu_server().env(var, "short").args(extra));
        assert_eq!(out.status.code(), Some(2), "{var}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 32 bytes"), "{stderr}");
        assert!(
            stderr.contains("head -c 32 /dev/urandom | base64"),
            "{stderr}"
        );
    }
}

#[test]
fn public_binding_without_secret_exits_2() {
    for args in [
        &["--http", "0.0.0.0:0"][..],
        &["run", "--http", "0.0.0.0:0"],
    ] {
        let out = run(sfu_server().args(args));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--insecure"), "{stderr}");
        assert!(stderr.contains("0.0.0.0:0"), "{stderr}");
    }
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("sfu-cli-unknown-{}.toml", std::process::id()));
    std::fs::write(&path, "slots = 3\nfrobnicate = true\n").unwrap();
    let out = run(sfu_server().arg("--config").arg(&path));
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("frobnicate"), "{stderr}");
}

#[test]
fn bad_environment_value_exits_2() {
    let out = run(sfu_server().env("SFU_SLOTS", "abc"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SFU_SLOTS"), "{stderr}");
}
