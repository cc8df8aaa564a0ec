//! The hybrid channels' keys (`hybrid`, `p2p_*`): their environment
//! variables, their checks, and the settings the room layer takes.

use std::time::Duration;

use super::{parse_bool, parse_env, split_list, Config, ConfigError, NodeRole};
use crate::names;
use crate::rooms::mode::{HybridSettings, Rollout};

impl Config {
    /// `SFU_HYBRID`, `SFU_P2P_MAX`, `SFU_P2P_RETURN_AT`,
    /// `SFU_P2P_RETURN_AFTER_SECS`, `SFU_P2P_ROLLOUT_PERCENT`,
    /// `SFU_P2P_SWITCH_TIMEOUT_SECS`, `SFU_P2P_DISABLED_CHANNELS` (comma
    /// separated), `SFU_ADMIN_TOKEN`.
    pub(super) fn apply_hybrid_env(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = env("SFU_HYBRID") {
            self.hybrid = parse_bool("SFU_HYBRID", v)?;
        }
        if let Some(v) = env("SFU_P2P_MAX") {
            self.p2p_max = parse_env("SFU_P2P_MAX", v)?;
        }
        if let Some(v) = env("SFU_P2P_RETURN_AT") {
            self.p2p_return_at = parse_env("SFU_P2P_RETURN_AT", v)?;
        }
        if let Some(v) = env("SFU_P2P_RETURN_AFTER_SECS") {
            self.p2p_return_after_secs = parse_env("SFU_P2P_RETURN_AFTER_SECS", v)?;
        }
        if let Some(v) = env("SFU_P2P_ROLLOUT_PERCENT") {
            self.p2p_rollout_percent = parse_env("SFU_P2P_ROLLOUT_PERCENT", v)?;
        }
        if let Some(v) = env("SFU_P2P_SWITCH_TIMEOUT_SECS") {
            self.p2p_switch_timeout_secs = parse_env("SFU_P2P_SWITCH_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = env("SFU_P2P_DISABLED_CHANNELS") {
            self.p2p_disabled_channels = split_list(&v);
        }
        if let Some(v) = env("SFU_ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        Ok(())
    }

    /// The hybrid settings these keys make, checked (whether or not
    /// `hybrid` is on: a node turned on at runtime must have good ones).
    pub fn hybrid_settings(&self) -> Result<HybridSettings, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        let rollout = Rollout::from_percent(self.p2p_rollout_percent).ok_or_else(|| {
            invalid(
                "p2p_rollout_percent",
                format!(
                    "{} is not a percentage (0 to 100)",
                    self.p2p_rollout_percent
                ),
            )
        })?;
        for channel in &self.p2p_disabled_channels {
            names::check_channel(channel)
                .map_err(|e| invalid("p2p_disabled_channels", e.to_string()))?;
        }
        let settings = HybridSettings {
            enabled: self.hybrid,
            rollout,
            disabled_channels: self.p2p_disabled_channels.iter().cloned().collect(),
            p2p_max: self.p2p_max,
            p2p_return_at: self.p2p_return_at,
            p2p_return_after: Duration::from_secs(self.p2p_return_after_secs),
            switch_timeout: Duration::from_secs(self.p2p_switch_timeout_secs),
        };
        settings.validate().map_err(|e| {
            let field = match e {
                crate::rooms::mode::SettingsError::P2pMax(_) => "p2p_max",
                crate::rooms::mode::SettingsError::ReturnAt { .. } => "p2p_return_at",
                crate::rooms::mode::SettingsError::ReturnAfter(_) => "p2p_return_after_secs",
                crate::rooms::mode::SettingsError::SwitchTimeout(_) => "p2p_switch_timeout_secs",
            };
            invalid(field, e.to_string())
        })?;
        Ok(settings)
    }

    /// These keys set from `settings` (the admin endpoint's changes are
    /// checked as the configuration's are).
    pub fn set_hybrid_keys(&mut self, settings: &HybridSettings) {
        self.hybrid = settings.enabled;
        self.p2p_max = settings.p2p_max;
        self.p2p_return_at = settings.p2p_return_at;
        self.p2p_return_after_secs = settings.p2p_return_after.as_secs();
        self.p2p_rollout_percent = settings.rollout.percent();
        self.p2p_switch_timeout_secs = settings.switch_timeout.as_secs();
        self.p2p_disabled_channels = settings.disabled_channels.iter().cloned().collect();
    }

    /// Refuses bad hybrid settings, hybrid channels where a channel's
    /// members may be on several nodes (each would build a mesh of its own
    /// members only), and a `spread_after` that would spread a channel
    /// still small enough for P2P over the workers.
    pub fn validate_hybrid(&self) -> Result<(), ConfigError> {
        self.hybrid_settings()?;
        if !self.hybrid {
            return Ok(());
        }
        let refuse = |reason: &str| {
            Err(ConfigError::Invalid {
                field: "hybrid",
                reason: reason.to_owned(),
            })
        };
        if self.role != NodeRole::Standalone || self.redis_url.is_some() {
            return refuse(
                "hybrid channels run on a standalone node (not a core, an edge or a fleet node): \
                 a channel's members must all be on this node to form a mesh",
            );
        }
        let spread = self.effective_spread_after();
        if spread > 0 && spread <= self.p2p_max {
            return Err(ConfigError::Invalid {
                field: "spread_after",
                reason: format!(
                    "{spread} is not above p2p_max ({}): a channel must be on the SFU before it \
                     spreads over the workers (a mesh does not reach another worker's members)",
                    self.p2p_max
                ),
            });
        }
        Ok(())
    }
}
