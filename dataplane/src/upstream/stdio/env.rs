//! What a child process sees as its environment, built from scratch: PATH, HOME (its own folder)
//! and LANG, then the Target's env, then the caller's credential env opened at spawn time.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use reflow_crds::SealingKey;
use reflow_crds::snapshot::ResolvedCredentials;
use secrecy::{ExposeSecret, SecretString};

/// PATH when the gateway itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const DEFAULT_LANG: &str = "C.UTF-8";

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Names the variable, never its value.
    #[error("credential env var {0} cannot be opened")]
    Credential(String),
    #[error("env var name {0:?} is invalid")]
    Name(String),
    #[error("the value of env var {0} contains a NUL byte")]
    Value(String),
}

impl EnvError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Credential(_) => "credential",
            Self::Name(_) => "stdio_env",
            Self::Value(_) => "stdio_env",
        }
    }
}

/// A child's complete environment. Every value is held as a secret (credentials are among
/// them) and `Debug` lists names only, so printing a spec never leaks a value.
#[derive(Clone, Default)]
pub struct ChildEnv {
    vars: Vec<(String, SecretString)>,
    /// The values opened from credentials (redacted from the child's stderr).
    injected: Vec<SecretString>,
}

impl ChildEnv {
    /// The allow-list: PATH (the gateway's, which is not a secret), HOME = `home`, LANG, and
    /// TMPDIR = `home/tmp` (the only temporary folder a sandboxed child can write).
    pub fn base(home: &Path) -> Self {
        let mut env = Self::default();
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
        let lang = std::env::var("LANG").unwrap_or_else(|_| DEFAULT_LANG.to_owned());
        env.set_unchecked("PATH", path);
        env.set_unchecked("HOME", home.to_string_lossy().into_owned());
        env.set_unchecked("LANG", lang);
        env.set_unchecked("TMPDIR", home.join("tmp").to_string_lossy().into_owned());
        env
    }

    /// `base(home)`, then the Target's `env`, then the caller's credential env (which wins on a
    /// clash: it is the more specific). Sealed values are opened here and nowhere else.
    pub fn for_target(
        home: &Path,
        target_env: &[(Arc<str>, Arc<str>)],
        creds: &ResolvedCredentials,
        key: &SealingKey,
    ) -> Result<Self, EnvError> {
        let mut env = Self::base(home);
        for (name, value) in target_env {
            env.set(name, value.to_string())?;
        }
        for entry in creds.env() {
            let value = key
                .open(&entry.aad, &entry.value)
                .map_err(|_| EnvError::Credential(entry.name.to_string()))?;
            env.set(&entry.name, value.expose_secret().to_owned())?;
            env.injected.push(value);
        }
        Ok(env)
    }

    /// Sets (or replaces) one variable.
    pub fn set(&mut self, name: &str, value: String) -> Result<(), EnvError> {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(EnvError::Name(name.to_owned()));
        }
        if value.contains('\0') {
            return Err(EnvError::Value(name.to_owned()));
        }
        self.set_unchecked(name, value);
        Ok(())
    }

    fn set_unchecked(&mut self, name: &str, value: String) {
        let value = SecretString::from(value);
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name.to_owned(), value)),
        }
    }

    /// The credential values injected into this environment.
    pub fn secret_values(&self) -> Vec<SecretString> {
        self.injected.clone()
    }

    /// The folders of its PATH.
    pub fn path_dirs(&self) -> impl Iterator<Item = &Path> {
        self.vars
            .iter()
            .filter(|(n, _)| n == "PATH")
            .flat_map(|(_, v)| v.expose_secret().split(':'))
            .filter(|d| d.starts_with('/'))
            .map(Path::new)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|(n, _)| n.as_str())
    }

    /// Clears `cmd`'s inherited environment and sets exactly these variables.
    pub(crate) fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear();
        for (name, value) in &self.vars {
            cmd.env(name, value.expose_secret());
        }
    }
}

impl fmt::Debug for ChildEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_only_and_later_values_win() {
        let mut env = ChildEnv::base(Path::new("/tmp/h"));
        env.set("API_KEY", "s3cret-value".into()).unwrap();
        env.set("API_KEY", "other-s3cret".into()).unwrap();
        let shown = format!("{env:?}");
        assert!(shown.contains("API_KEY") && shown.contains("HOME"));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(env.names().filter(|n| *n == "API_KEY").count(), 1);
    }

    #[test]
    fn invalid_names_and_values_are_refused() {
        let mut env = ChildEnv::default();
        assert!(matches!(env.set("", "x".into()), Err(EnvError::Name(_))));
        assert!(matches!(env.set("A=B", "x".into()), Err(EnvError::Name(_))));
        let err = env.set("A", "x\0hunter2".into()).unwrap_err();
        assert!(matches!(err, EnvError::Value(_)));
        assert!(!err.to_string().contains("hunter2"));
    }
}
