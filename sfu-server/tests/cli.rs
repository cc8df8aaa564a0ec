//! Runs the built `sfu-server` binary: token minting and configuration
//! refusals (not the running server).

mod binary;

use std::time::{SystemTime, UNIX_EPOCH};

use binary::{run, sfu_server};
use sfu_server::auth::{self, Grants};

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
        "s3cret",
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
    let grants = auth::verify(b"s3cret", lines[0], before).unwrap();
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
    let out = run(sfu_server().env("SFU_AUTH_SECRET", "from-env").args([
        "token",
        "--identity",
        "mod",
        "--channel",
        "*",
        "--moderate",
    ]));
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let grants = auth::verify(b"from-env", token.trim(), now()).unwrap();
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
