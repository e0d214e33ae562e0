//! `config/weir.toml`: the process configuration. Unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sandbox::{CodeCache, SandboxLimits, SandboxOptions};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeirConfig {
    /// Where compiled modules are cached. Default: `$WEIR_CACHE_DIR`, else
    /// `~/.cache/weir/compiled`.
    pub cache_dir: Option<PathBuf>,
    /// Set to false to compile every module on every start.
    pub cache: Option<bool>,
    pub sandbox: SandboxLimits,
    /// `weir serve`: listen address, data directory, tokens.
    pub serve: weir_serve::ServeConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl WeirConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: WeirConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.sandbox.validate()?;
        Ok(config)
    }

    pub fn sandbox_options(&self) -> SandboxOptions {
        let cache_dir = match self.cache {
            Some(false) => None,
            _ => self.cache_dir.clone().or_else(CodeCache::default_dir),
        };
        SandboxOptions {
            limits: self.sandbox.clone(),
            cache_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_matches_defaults() {
        let text = include_str!("../config/weir.toml");
        let config = WeirConfig::from_toml(text).unwrap();
        assert_eq!(config.sandbox, SandboxLimits::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = WeirConfig::from_toml("[sandbox]\nmemory_byts = 5\n").unwrap_err();
        assert!(err.contains("memory_byts"), "{err}");
        let err = WeirConfig::from_toml("[sandbox]\nmemory_bytes = 5\n").unwrap_err();
        assert!(err.contains("sandbox.memory_bytes"), "{err}");
    }
}
