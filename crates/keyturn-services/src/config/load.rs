//! Where a configuration comes from: the file (TOML, checked for pasted keys before serde can
//! quote one), the environment, then flags.

use std::path::{Path, PathBuf};

use super::checks::{env_holds_key, find_key_shaped, key_env_names, key_in_file, toml_error};
use super::{Backend, Config, Env, Overrides};
use crate::error::ConfigError;

impl Config {
    /// Parses TOML text; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml_with(text, path, &Env::new())
    }

    /// [`Config::from_toml`] knowing the environment, so that a key value configured there and
    /// pasted into the file is recognised (and hidden) too.
    pub fn from_toml_with(text: &str, path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let mut secrets = crate::discovery::env_secrets(env, &[]);
        let parsed = (|| {
            // First as plain TOML: a key pasted into any field, known or not, is found by name
            // before serde's messages (which quote values) can show it.
            let table: toml::Table =
                toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
            secrets.extend(crate::discovery::env_secrets(env, &key_env_names(&table)));
            if let Some((field, leaf)) = find_key_shaped(&table, "", &secrets) {
                return Err(key_in_file(path, &field, &leaf));
            }
            let mut cfg: Config = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
            cfg.source = Some(path.to_owned());
            cfg.validate()?;
            Ok(cfg)
        })();
        parsed.map_err(|e: ConfigError| e.scrubbed(&secrets))
    }

    /// Reads a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file_with(path, &Env::new())
    }

    /// [`Config::from_file`] knowing the environment (see [`Config::from_toml_with`]).
    pub fn from_file_with(path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let text = crate::discovery::read_small_file(path).map_err(|e| e.scrubbed(&[]))?;
        Self::from_toml_with(&text, path, env)
    }

    /// The configuration in force: the file (from `config_path`, else `KEYTURN_CONFIG`, else
    /// `./keyturn.toml` if present), then the environment, then flags.
    pub fn load(
        config_path: Option<&Path>,
        env: &Env,
        cwd: &Path,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let from_env = env.get("KEYTURN_CONFIG").filter(|v| !v.is_empty());
        if config_path.is_none()
            && let Some(v) = from_env
            && crate::error::looks_like_key(v)
        {
            return Err(env_holds_key("KEYTURN_CONFIG", "a path"));
        }
        let path = config_path
            .map(Path::to_owned)
            .or_else(|| from_env.map(PathBuf::from))
            .or_else(|| {
                let p = cwd.join("keyturn.toml");
                p.exists().then_some(p)
            });
        let mut cfg = match path {
            Some(p) => Self::from_file_with(&resolve(cwd, &p), env)?,
            None => Self::default(),
        };
        cfg.apply_env(env);
        cfg.apply_overrides(overrides);
        if cfg.state.dir.is_relative() {
            cfg.state.dir = cwd.join(&cfg.state.dir);
        }
        let names: Vec<String> = cfg.keys.iter().filter_map(|k| k.env.clone()).collect();
        cfg.validate()
            .map_err(|e| e.scrubbed(&crate::discovery::env_secrets(env, &names)))?;
        Ok(cfg)
    }

    /// Environment over file.
    pub fn apply_env(&mut self, env: &Env) {
        if let Some(d) = env.get("KEYTURN_STATE_DIR").filter(|v| !v.is_empty()) {
            self.state.dir = PathBuf::from(d);
        }
        if let Some(u) = env.get("KEYTURN_REDIS_URL").filter(|v| !v.is_empty()) {
            self.state.redis_url = u.clone();
            self.state.backend = Backend::Redis;
        }
        if let Some(u) = env.get("GEMINI_BASE_URL").filter(|v| !v.is_empty()) {
            self.http.base_url = u.clone();
        }
    }

    /// Flags over everything.
    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(d) = &o.state_dir {
            self.state.dir = d.clone();
        }
        if let Some(u) = &o.redis_url {
            self.state.redis_url = u.clone();
            self.state.backend = Backend::Redis;
        }
        if let Some(u) = &o.base_url {
            self.http.base_url = u.clone();
        }
        if let Some(p) = o.policy {
            self.rotation.policy = p;
        }
        if o.no_cache {
            self.cache.enabled = false;
        }
        if let Some(a) = o.metrics_addr {
            self.metrics.addr = Some(a);
        }
    }
}

fn resolve(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        cwd.join(p)
    } else {
        p.to_owned()
    }
}
