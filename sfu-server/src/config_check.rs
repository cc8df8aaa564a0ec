//! `sfu-server --check-config FILE`: everything the server would refuse at
//! start-up about a configuration, found without starting it, reported as
//! the key at fault and the reason (for an operator, a deploy pipeline or a
//! configuration-management run).

use std::path::Path;

use crate::config::{Config, ConfigError, Overrides};

/// What is wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key (or `SFU_*` variable) at fault, when one is.
    pub key: Option<String>,
    /// Why it is refused.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Checks what `sfu-server --config FILE` would run with: the file over the
/// defaults, then the `SFU_*` environment (`env`), validated, and the TLS
/// certificate and key loaded when they are set.
pub fn check(file: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Problem> {
    // Parsed here first for the error's position, which names the key;
    // `Config::load` below keeps only the message.
    let text = std::fs::read_to_string(file).map_err(|e| Problem {
        key: None,
        reason: format!("cannot read {}: {e}", file.display()),
    })?;
    if let Err(e) = toml::from_str::<Config>(&text) {
        return Err(toml_problem(&text, &e));
    }
    let config = Config::load(Some(file), env, &Overrides::default()).map_err(problem)?;
    config.validate().map_err(problem)?;
    crate::tls::Https::from_config(&config).map_err(|e| Problem {
        key: Some(e.config_key().to_owned()),
        reason: e.to_string(),
    })?;
    Ok(config)
}

/// The key of a configuration error and its reason.
fn problem(e: ConfigError) -> Problem {
    let key = match &e {
        ConfigError::Invalid { field, .. } => Some((*field).to_owned()),
        ConfigError::UnsafeBinding { what, .. } => Some(what.to_ascii_lowercase()),
        ConfigError::TurnWithoutSecret => Some("turn_secret".to_owned()),
        ConfigError::Env { name, .. } => Some((*name).to_owned()),
        ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
    };
    let reason = match &e {
        // Its Display repeats the field ("invalid slots: ...").
        ConfigError::Invalid { reason, .. } => reason.clone(),
        _ => e.to_string(),
    };
    Problem { key, reason }
}

/// A TOML error as key and reason: the key is the one on the line the error
/// points at (an unknown key, or the key whose value has the wrong type).
fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let line_no = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let key = line_no
        .and_then(|n| text.lines().nth(n - 1))
        .and_then(|line| line.split_once('='))
        .map(|(key, _)| key.trim().trim_matches('"').to_owned())
        .filter(|key| !key.is_empty() && !key.starts_with('#'));
    let at = line_no.map(|n| format!(" (line {n})")).unwrap_or_default();
    Problem {
        key,
        reason: format!("{}{at}", e.message().trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_of(text: &str) -> Problem {
        let e = toml::from_str::<Config>(text).unwrap_err();
        toml_problem(text, &e)
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let p = problem_of("slots = 3\nbogus_key = 1\n");
        assert_eq!(p.key.as_deref(), Some("bogus_key"));
        assert!(p.reason.contains("unknown field"), "{p}");
        assert!(p.reason.ends_with("(line 2)"), "{p}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let p = problem_of("# a comment = with an equals sign\nslots = \"three\"\n");
        assert_eq!(p.key.as_deref(), Some("slots"));
        assert!(p.reason.contains("invalid type"), "{p}");
        let p = problem_of("http = \"localhost\"\n");
        assert_eq!(p.key.as_deref(), Some("http"));
    }

    #[test]
    fn validation_errors_name_their_key() {
        let invalid = Config {
            slots: 0,
            ..Config::default()
        };
        let p = problem(invalid.validate().unwrap_err());
        assert_eq!(p.key.as_deref(), Some("slots"));
        assert_eq!(
            p.to_string(),
            format!("slots: 0 is out of range 1..={}", media_core::MAX_SLOTS)
        );
        let public = Config {
            udp: "0.0.0.0:0".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(
            problem(public.validate().unwrap_err()).key.as_deref(),
            Some("udp")
        );
        let turn = Config {
            turn_urls: vec!["turn:t:3478".into()],
            ..Config::default()
        };
        assert_eq!(
            problem(turn.validate().unwrap_err()).key.as_deref(),
            Some("turn_secret")
        );
    }
}
