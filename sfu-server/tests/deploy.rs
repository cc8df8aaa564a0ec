//! What deploy/ promises an operator about the binary: the example
//! configuration documents every key with its default and passes
//! `--check-config`; a broken configuration fails it with the key and the
//! reason; `--log-format json` writes one JSON object per line.

mod binary;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use binary::{run, sfu_server};
use serde::de::{self, Visitor};
use sfu_server::Config;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sfu-server.toml");

/// The keys `Config` accepts, as serde knows them: a key added to the
/// struct shows up here without anyone listing it.
fn config_keys() -> BTreeSet<&'static str> {
    /// A deserializer that only records the field list it is asked for.
    struct FieldNames(&'static [&'static str]);
    impl<'de> de::Deserializer<'de> for &mut FieldNames {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = FieldNames(&[]);
    let _ = <Config as serde::Deserialize>::deserialize(&mut names);
    assert!(!names.0.is_empty(), "Config is not a struct to serde");
    names.0.iter().copied().collect()
}

/// A key line of the example: `key = value`, or `# key = value` for a key
/// shown commented out.
fn key_of(line: &str) -> Option<(&str, bool)> {
    let (commented, rest) = match line.strip_prefix("# ") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (key, _) = rest.split_once(" = ")?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    is_key.then_some((key, commented))
}

#[test]
fn the_example_config_documents_every_key_with_its_default() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let (mut set, mut shown_commented) = (BTreeSet::new(), BTreeSet::new());
    // Each key needs a comment in its paragraph that is not itself a key.
    let mut prose_in_paragraph = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            prose_in_paragraph = false;
            continue;
        }
        match key_of(line) {
            Some((key, commented)) => {
                assert!(prose_in_paragraph, "{key} has no comment above it");
                let fresh = if commented {
                    shown_commented.insert(key)
                } else {
                    set.insert(key)
                };
                assert!(fresh, "{key} appears twice");
            }
            None if line.starts_with('#') => prose_in_paragraph = true,
            None => panic!("a line that is neither a comment nor a key: {line:?}"),
        }
    }
    let documented: BTreeSet<&str> = set.union(&shown_commented).copied().collect();
    let keys = config_keys();
    assert_eq!(
        documented,
        keys,
        "deploy/sfu-server.toml must show every key of Config (missing: {:?}; unknown: {:?})",
        keys.difference(&documented).collect::<Vec<_>>(),
        documented.difference(&keys).collect::<Vec<_>>()
    );
    assert!(set.is_disjoint(&shown_commented));

    // The values set are the defaults, and the keys shown commented out are
    // the ones whose default is "unset".
    let parsed: Config = toml::from_str(&text).unwrap();
    assert_eq!(
        parsed,
        Config::default(),
        "a value in the example is not the default"
    );
    for key in &shown_commented {
        let one: Config = toml::from_str(
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("# ")
                        .filter(|l| key_of(l) == Some((key, false)))
                })
                .unwrap(),
        )
        .unwrap_or_else(|e| panic!("the commented-out {key} does not parse: {e}"));
        assert_ne!(
            one,
            Config::default(),
            "{key}: its example value is its default"
        );
    }
}

#[test]
fn check_config_accepts_the_example() {
    let out = run(sfu_server().arg("--check-config").arg(EXAMPLE));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "ok\n");
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sfu-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `--check-config` on `contents` fails with exit 2 and "FILE: KEY: ...".
fn refused(contents: &str, env: &[(&str, &str)], key: &str, reason: &str) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = temp_file(&format!("refused-{n}.toml"), contents);
    let out = run(sfu_server()
        .envs(env.iter().copied())
        .arg("--check-config")
        .arg(&path));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{contents:?}: {stderr}");
    assert!(out.stdout.is_empty());
    let expected = format!("sfu-server: {}: {key}: ", path.display());
    assert!(
        stderr.starts_with(&expected),
        "{stderr:?} does not start with {expected:?}"
    );
    assert!(stderr.contains(reason), "{stderr:?} lacks {reason:?}");
}

#[test]
fn check_config_names_the_key_and_the_reason() {
    refused(
        "slots = 3\nbogus = 1\n",
        &[],
        "bogus",
        "unknown field `bogus`",
    );
    refused("slots = \"three\"\n", &[], "slots", "invalid type");
    refused("slots = 0\n", &[], "slots", "out of range");
    refused(
        "http = \"0.0.0.0:8080\"\n",
        &[],
        "http",
        "without auth_secret",
    );
    refused(
        "turn_urls = [\"turn:t.example.org:3478\"]\n",
        &[],
        "turn_secret",
        "turn_urls are configured",
    );
    refused(
        "log = \"info,[[[\"\n",
        &[],
        "log",
        "not a valid tracing filter",
    );
    refused(
        "log_format = \"xml\"\n",
        &[],
        "log_format",
        "unknown variant `xml`",
    );
    refused("tls_cert = \"/x.pem\"\n", &[], "tls_key", "go together");
    // The environment is part of what the server would run with.
    refused(
        "slots = 3\n",
        &[("SFU_SLOTS", "abc")],
        "SFU_SLOTS",
        "invalid digit",
    );
    // With a secret from the environment a public address is fine.
    let path = temp_file("env-secret.toml", "http = \"0.0.0.0:8080\"\n");
    let out = run(sfu_server()
        .env("SFU_AUTH_SECRET", "s".repeat(32))
        .arg("--check-config")
        .arg(&path));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn check_config_loads_the_certificate_and_key() {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = temp_file("cert.pem", &c.cert.pem());
    let key = temp_file("key.pem", &c.signing_key.serialize_pem());
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_key = temp_file("other-key.pem", &other.signing_key.serialize_pem());
    let tls = |cert: &Path, key: &Path| {
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let good = temp_file("tls.toml", &tls(&cert, &key));
    let out = run(sfu_server().arg("--check-config").arg(&good));
    assert!(out.status.success(), "{out:?}");

    refused(
        &tls(&cert, &other_key),
        &[],
        "tls_key",
        "does not belong to the certificate",
    );
    refused(&tls(&key, &key), &[], "tls_cert", "no PEM certificate");
    refused(
        &tls(&cert, &cert),
        &[],
        "tls_key",
        "no usable PEM private key",
    );
    refused(
        &tls(Path::new("/nonexistent/cert.pem"), &key),
        &[],
        "tls_cert",
        "cannot read /nonexistent/cert.pem",
    );
}

#[cfg(unix)]
#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut child = sfu_server()
        .args(["--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
        .args(["--log", "info", "--log-format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut objects = Vec::new();
    // Up to the start-up line, then stop the server and read the rest.
    for line in lines.by_ref() {
        let line = line.unwrap();
        let object: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        let listening = object["fields"]["message"] == "sfu-server listening";
        objects.push(object);
        if listening {
            break;
        }
    }
    binary::signal(&child, nix::sys::signal::Signal::SIGTERM);
    for line in lines {
        let line = line.unwrap();
        objects.push(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}")),
        );
    }
    assert!(child.wait().unwrap().success());
    let started = objects
        .iter()
        .find(|o| o["fields"]["message"] == "sfu-server listening")
        .expect("the start-up line");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["target"], "sfu_server::server");
    assert_eq!(started["fields"]["dev_mode"], true);
    assert!(started["fields"]["http"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(started["timestamp"].is_string());
    assert!(
        objects
            .iter()
            .any(|o| o["fields"]["message"] == "shutting down: draining"),
        "{objects:?}"
    );
}
