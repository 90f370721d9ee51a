//! The gateway's file configuration (`reflow-dataplane --config FILE`): YAML with camelCase keys
//! for token issuers (`auth`), server settings (`gateway`), the audit sink, the sealing key and a
//! `dev` block for local HS256 tokens. Relative paths are resolved against the file's folder.
//! Secrets are never printed: `Debug` redacts them and errors name files, never contents.
//!
//! ```yaml
//! auth:                      # optional when `dev` is set
//!   issuers: [{issuer: https://idp.example.com, audiences: [reflow], discovery: true}]
//! gateway: {allowedHosts: [mcp.example.com], publicUrl: https://mcp.example.com}
//! audit: {sink: file, path: /var/log/reflow/audit.jsonl}   # or {sink: stdout} (default)
//! #   a full queue waits for the writer; failurePolicy: failClosed refuses requests meanwhile
//! sealingKeyFile: /etc/reflow/sealing-key                    # or env REFLOW_SEALING_KEY
//! dev: {issuer: reflow-dev, audience: reflow, hs256SecretFile: dev-secret}
//! database: {urlFile: /etc/reflow/database-url, maxConnections: 16}  # or env REFLOW_DATABASE_URL
//! # with `database`, audit defaults to {sink: postgres}: add failurePolicy (buffer | failClosed),
//! # spillDir (required), batchSize, retentionDays
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reflow_crds::SealingKey;
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::{AuthConfig, AuthConfigError, IssuerConfig};
use crate::mcp::GatewayConfig;
use crate::postgres::FailurePolicy;

/// Environment variable holding the base64 sealing key itself; wins over `sealingKeyFile`.
pub const SEALING_KEY_ENV: &str = "REFLOW_SEALING_KEY";

/// Environment variable holding the Postgres URL itself; wins over `database.urlFile`.
pub const DATABASE_URL_ENV: &str = "REFLOW_DATABASE_URL";

/// Why the configuration cannot be used. Messages name files and keys, never secret values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {source}")]
    Auth {
        path: PathBuf,
        source: AuthConfigError,
    },
    #[error(
        "config {path}: no token issuer configured; add `auth.issuers` or a `dev` block (or run with --insecure-dev-user for local experiments)"
    )]
    NoIssuers { path: PathBuf },
    #[error("config {path}: dev: set exactly one of `hs256Secret` and `hs256SecretFile`")]
    DevSecretSource { path: PathBuf },
    #[error("reading dev.hs256SecretFile {path}: {source}")]
    DevSecretRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: has no `dev` block; `token` only mints with the dev HS256 secret")]
    NoDevBlock { path: PathBuf },
    #[error("config {path}: audit: {reason}")]
    Audit { path: PathBuf, reason: &'static str },
    #[error("reading sealingKeyFile {path}: {source}")]
    SealingKeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sealing key from {origin} is not the base64 encoding of 32 bytes")]
    SealingKey { origin: String },
    #[error("reading database.urlFile {path}: {source}")]
    DatabaseUrlRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "config {path}: database: set `urlFile` or the {DATABASE_URL_ENV} environment variable"
    )]
    NoDatabaseUrl { path: PathBuf },
}

impl ConfigError {
    /// Stable, low-cardinality label (logs, metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Parse { .. } => "parse",
            Self::Auth { source, .. } => source.label(),
            Self::NoIssuers { .. } => "no_issuers",
            Self::DevSecretSource { .. } => "dev_secret_source",
            Self::DevSecretRead { .. } => "dev_secret_read",
            Self::NoDevBlock { .. } => "no_dev_block",
            Self::Audit { .. } => "audit",
            Self::SealingKeyRead { .. } => "sealing_key_read",
            Self::SealingKey { .. } => "sealing_key",
            Self::DatabaseUrlRead { .. } => "database_url_read",
            Self::NoDatabaseUrl { .. } => "no_database_url",
        }
    }
}

/// The YAML document as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    auth: Option<AuthConfig>,
    #[serde(default)]
    gateway: GatewayConfig,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    sealing_key_file: Option<PathBuf>,
    #[serde(default)]
    dev: Option<RawDev>,
    #[serde(default)]
    database: Option<RawDatabase>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDatabase {
    #[serde(default)]
    url_file: Option<PathBuf>,
    #[serde(default)]
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAudit {
    /// Unset: `postgres` with a `database` block, else `stdout`.
    #[serde(default)]
    sink: Option<AuditSinkKind>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    capacity: Option<usize>,
    #[serde(default)]
    failure_policy: Option<FailurePolicy>,
    #[serde(default)]
    spill_dir: Option<PathBuf>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    retention_days: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum AuditSinkKind {
    Stdout,
    File,
    Postgres,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDev {
    #[serde(default = "default_dev_issuer")]
    issuer: String,
    #[serde(default = "default_dev_audience")]
    audience: String,
    /// A literal secret: local development only.
    #[serde(default)]
    hs256_secret: Option<SecretString>,
    #[serde(default)]
    hs256_secret_file: Option<PathBuf>,
}

fn default_dev_issuer() -> String {
    "reflow-dev".to_owned()
}
fn default_dev_audience() -> String {
    "reflow".to_owned()
}

/// Where audit events are written, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    /// Appended to (created if missing).
    File(PathBuf),
    /// The `database`'s `reflow_audit_events` table, spilling to `spill_dir` while it is away.
    Postgres(PostgresAudit),
}

/// Settings of the Postgres audit sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresAudit {
    pub failure_policy: FailurePolicy,
    pub spill_dir: PathBuf,
    pub batch_size: usize,
    /// Events older than this are deleted; `None` keeps them forever.
    pub retention: Option<Duration>,
}

/// Audit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub target: AuditTarget,
    /// Events held in memory; a full queue waits (JSON lines) or spills (Postgres), never drops.
    pub capacity: usize,
    /// `failClosed`: requests are refused while events cannot be written (Postgres away, or the
    /// JSON-lines queue full); `buffer` waits or spills.
    pub failure_policy: FailurePolicy,
}

/// Where sessions and (by default) audit events are kept when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// File holding the URL (`postgres://user:password@host/db`); the env var wins.
    pub url_file: Option<PathBuf>,
    pub max_connections: usize,
}

/// The development issuer: HS256 tokens minted by `reflow-dataplane token`.
#[derive(Clone)]
pub struct DevIssuer {
    pub issuer: String,
    pub audience: String,
    pub secret: SecretString,
}

impl fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// Where the sealing key comes from, once resolved against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SealingSource {
    File(PathBuf),
    None,
}

/// The loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// Trusted issuers, the dev issuer included; `None` when neither `auth` nor `dev` is set.
    pub auth: Option<AuthConfig>,
    pub gateway: GatewayConfig,
    pub audit: AuditConfig,
    pub dev: Option<DevIssuer>,
    /// Postgres for sessions and audit; `None` keeps both in process (memory, JSON lines).
    pub database: Option<DatabaseConfig>,
    sealing: SealingSource,
}

impl Config {
    /// Reads, parses and validates `path`, loading the dev secret file if one is named.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::from_yaml(&text, path, base)
    }

    /// Parses `text` as if read from `path`; relative paths are resolved against `base`.
    pub fn from_yaml(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let path = path.to_owned();
        // An empty file is an empty mapping: every default, no issuer.
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?
        };

        let dev_file = raw
            .dev
            .as_ref()
            .and_then(|d| d.hs256_secret_file.as_ref())
            .map(|f| base.join(f));
        let dev = raw.dev.map(|d| dev_issuer(d, &path, base)).transpose()?;

        let auth = match (raw.auth, &dev) {
            (None, None) => None,
            (auth, dev) => {
                let mut auth = auth.unwrap_or_else(|| AuthConfig::new(Vec::new()));
                if let Some(dev) = dev {
                    let mut issuer = IssuerConfig::new(&dev.issuer, [&dev.audience]);
                    issuer.hs256_secret = Some(dev.secret.clone());
                    auth.issuers.push(issuer);
                }
                auth.validate().map_err(|source| ConfigError::Auth {
                    path: path.clone(),
                    source,
                })?;
                Some(auth)
            }
        };

        let database = raw.database.map(|d| DatabaseConfig {
            url_file: d.url_file.map(|f| base.join(f)),
            max_connections: d.max_connections.unwrap_or(16),
        });
        let audit = audit_config(raw.audit, database.is_some(), &path, base)?;

        let mut gateway = raw.gateway;
        if let Some(f) = gateway.identity_tokens.signing_key_file.take() {
            gateway.identity_tokens.signing_key_file = Some(base.join(f));
        }
        if let Some(tls) = &mut gateway.tls {
            tls.resolve_paths(base);
        }
        let sealing = match raw.sealing_key_file {
            Some(f) => SealingSource::File(base.join(f)),
            None => SealingSource::None,
        };
        protect_own_files(
            &mut gateway,
            &path,
            &sealing,
            dev_file.as_deref(),
            &database,
        );
        Ok(Self {
            path,
            auth,
            gateway,
            audit,
            dev,
            database,
            sealing,
        })
    }

    /// The trusted issuers, or why there are none.
    pub fn require_auth(&self) -> Result<&AuthConfig, ConfigError> {
        self.auth.as_ref().ok_or_else(|| ConfigError::NoIssuers {
            path: self.path.clone(),
        })
    }

    /// The dev issuer, or why `token` cannot mint.
    pub fn require_dev(&self) -> Result<&DevIssuer, ConfigError> {
        self.dev.as_ref().ok_or_else(|| ConfigError::NoDevBlock {
            path: self.path.clone(),
        })
    }

    /// The sealing key: `env_value` (the content of [`SEALING_KEY_ENV`]) wins over
    /// `sealingKeyFile`; `None` when neither is set.
    pub fn sealing_key(&self, env_value: Option<&str>) -> Result<Option<SealingKey>, ConfigError> {
        if let Some(v) = env_value {
            return SealingKey::from_base64(v)
                .map(Some)
                .map_err(|_| ConfigError::SealingKey {
                    origin: SEALING_KEY_ENV.to_owned(),
                });
        }
        match &self.sealing {
            SealingSource::None => Ok(None),
            SealingSource::File(f) => {
                let text =
                    std::fs::read_to_string(f).map_err(|source| ConfigError::SealingKeyRead {
                        path: f.clone(),
                        source,
                    })?;
                SealingKey::from_base64(&text)
                    .map(Some)
                    .map_err(|_| ConfigError::SealingKey {
                        origin: f.display().to_string(),
                    })
            }
        }
    }
}

impl Config {
    /// The database URL: `env_value` (the content of [`DATABASE_URL_ENV`]) wins over
    /// `database.urlFile`; `None` without a `database` block. Never printed.
    pub fn database_url(
        &self,
        env_value: Option<&str>,
    ) -> Result<Option<SecretString>, ConfigError> {
        let Some(db) = &self.database else {
            return Ok(None);
        };
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            return Ok(Some(SecretString::from(v.trim().to_owned())));
        }
        match &db.url_file {
            Some(f) => std::fs::read_to_string(f)
                .map(|t| Some(SecretString::from(t.trim().to_owned())))
                .map_err(|source| ConfigError::DatabaseUrlRead {
                    path: f.clone(),
                    source,
                }),
            None => Err(ConfigError::NoDatabaseUrl {
                path: self.path.clone(),
            }),
        }
    }
}

/// The `dev` block: its issuer, with the secret inline or read from a file beside the config.
fn dev_issuer(d: RawDev, path: &Path, base: &Path) -> Result<DevIssuer, ConfigError> {
    let secret = match (d.hs256_secret, d.hs256_secret_file) {
        (Some(s), None) => s,
        (None, Some(f)) => {
            let f = base.join(f);
            let text = std::fs::read_to_string(&f)
                .map_err(|source| ConfigError::DevSecretRead { path: f, source })?;
            SecretString::from(text.trim().to_owned())
        }
        _ => {
            return Err(ConfigError::DevSecretSource {
                path: path.to_owned(),
            });
        }
    };
    Ok(DevIssuer {
        issuer: d.issuer,
        audience: d.audience,
        secret,
    })
}

/// The `audit` block: where events go (stdout, a file, Postgres) and how many may wait.
fn audit_config(
    a: RawAudit,
    has_database: bool,
    path: &Path,
    base: &Path,
) -> Result<AuditConfig, ConfigError> {
    let audit_err = |reason| ConfigError::Audit {
        path: path.to_owned(),
        reason,
    };
    let sink = a.sink.unwrap_or(if has_database {
        AuditSinkKind::Postgres
    } else {
        AuditSinkKind::Stdout
    });
    if sink != AuditSinkKind::Postgres
        && (a.spill_dir.is_some() || a.batch_size.is_some() || a.retention_days.is_some())
    {
        return Err(audit_err(
            "`spillDir`, `batchSize` and `retentionDays` only apply to `sink: postgres`",
        ));
    }
    let failure_policy = a.failure_policy.unwrap_or_default();
    let target = match (sink, a.path) {
        (AuditSinkKind::Stdout, None) => AuditTarget::Stdout,
        (AuditSinkKind::File, Some(p)) => AuditTarget::File(base.join(p)),
        (AuditSinkKind::Postgres, None) => {
            if !has_database {
                return Err(audit_err("`sink: postgres` needs a `database` block"));
            }
            let Some(spill_dir) = a.spill_dir else {
                return Err(audit_err(
                    "`sink: postgres` needs a `spillDir` (a writable folder of its own per replica, where events wait while the database is away)",
                ));
            };
            let batch_size = a.batch_size.unwrap_or(500);
            if batch_size == 0 {
                return Err(audit_err("`batchSize` must be at least 1"));
            }
            AuditTarget::Postgres(PostgresAudit {
                failure_policy,
                spill_dir: base.join(spill_dir),
                batch_size,
                retention: match a.retention_days.unwrap_or(90) {
                    0 => None,
                    d => Some(Duration::from_secs(d.saturating_mul(86_400))),
                },
            })
        }
        (AuditSinkKind::Stdout | AuditSinkKind::Postgres, Some(_)) => {
            return Err(audit_err("`path` only applies to `sink: file`"));
        }
        (AuditSinkKind::File, None) => {
            return Err(audit_err("`sink: file` needs a `path`"));
        }
    };
    let capacity = a.capacity.unwrap_or(4096);
    if capacity == 0 {
        return Err(audit_err("`capacity` must be at least 1"));
    }
    Ok(AuditConfig {
        target,
        capacity,
        failure_policy,
    })
}

pub use reflow_host::cli::parse_duration;

/// Everything of the gateway's own a STDIO child must never read: the config file's folder,
/// the key and secret files it names. Sandbox rules that would expose one are refused.
fn protect_own_files(
    gateway: &mut GatewayConfig,
    config: &Path,
    sealing: &SealingSource,
    dev_file: Option<&Path>,
    database: &Option<DatabaseConfig>,
) {
    let p = &mut gateway.stdio.protected;
    if let Some(dir) = config.parent().filter(|d| !d.as_os_str().is_empty()) {
        p.add(dir, "config folder");
    }
    p.add(config, "config file");
    if let SealingSource::File(f) = sealing {
        p.add(f, "sealing key file");
    }
    if let Some(f) = dev_file {
        p.add(f, "dev HS256 secret file");
    }
    if let Some(f) = database.as_ref().and_then(|d| d.url_file.as_deref()) {
        p.add(f, "database URL file");
    }
    if let Some(f) = gateway.identity_tokens.signing_key_file.clone() {
        p.add(&f, "identity-token signing key");
    }
    if let Some(f) = gateway.tls.as_ref().map(|t| t.key_file.clone()) {
        p.add(&f, "TLS key");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "dev-only-secret-0123456789abcdef0123456789";

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, Path::new("gw.yaml"), Path::new("/base"))
    }

    fn ok(yaml: &str) -> Config {
        parse(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn config_dev_block_adds_a_trusted_issuer_and_defaults_apply() {
        let cfg = ok(&format!(
            "dev: {{hs256Secret: {SECRET}}}\ngateway: {{allowedHosts: [localhost]}}\n"
        ));
        let auth = cfg.require_auth().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(auth.issuers.len(), 1);
        assert_eq!(auth.issuers[0].issuer, "reflow-dev");
        assert_eq!(auth.issuers[0].audiences, ["reflow"]);
        assert_eq!(cfg.gateway.allowed_hosts, ["localhost"]);
        assert_eq!(cfg.audit.target, AuditTarget::Stdout);
        assert!(matches!(cfg.sealing_key(None), Ok(None)));
    }

    #[test]
    fn config_relative_paths_resolve_against_the_config_folder() {
        let cfg = ok("audit: {sink: file, path: logs/audit.jsonl}\nsealingKeyFile: k\n");
        assert_eq!(
            cfg.audit.target,
            AuditTarget::File(PathBuf::from("/base/logs/audit.jsonl"))
        );
        assert_eq!(cfg.sealing, SealingSource::File(PathBuf::from("/base/k")));
        assert!(cfg.auth.is_none());
        assert!(matches!(
            cfg.require_auth(),
            Err(ConfigError::NoIssuers { .. })
        ));
        assert!(matches!(
            cfg.require_dev(),
            Err(ConfigError::NoDevBlock { .. })
        ));
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_blocks() {
        for (yaml, needle) in [
            ("autth: {}", "unknown field `autth`"),
            (
                "dev: {hs256Secret: x, hs256SecretFile: y}",
                "exactly one of",
            ),
            ("dev: {}", "exactly one of"),
            ("dev: {hs256Secret: short}", "at least 32 bytes"),
            ("audit: {sink: file}", "needs a `path`"),
            ("audit: {sink: stdout, path: x}", "only applies"),
            ("audit: {sink: syslog}", "unknown variant"),
            ("audit: {capacity: 0}", "at least 1"),
            ("audit: {sink: postgres, spillDir: s}", "needs a `database`"),
            ("database: {}\naudit: {batchSize: 10}", "needs a `spillDir`"),
            (
                "audit: {sink: file, path: a, spillDir: s}",
                "only apply to `sink: postgres`",
            ),
            (
                "database: {}\naudit: {spillDir: s, failurePolicy: open}",
                "unknown variant",
            ),
            ("database: {url: postgres://x}", "unknown field `url`"),
        ] {
            match parse(yaml) {
                Ok(_) => panic!("{yaml} must be refused"),
                Err(e) => assert!(e.to_string().contains(needle), "{yaml}: {e}"),
            }
        }
    }

    #[test]
    fn config_missing_dev_secret_file_names_the_file() {
        let e = parse("dev: {hs256SecretFile: nope/secret}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/base/nope/secret"), "{e}");
    }

    #[test]
    fn config_debug_and_errors_never_print_secrets() {
        let cfg = ok(&format!("dev: {{hs256Secret: {SECRET}}}"));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains(SECRET), "{dbg}");
        assert!(dbg.contains("REDACTED"), "{dbg}");

        let key = "bm90LWEta2V5"; // base64, but not 32 bytes
        let e = cfg.sealing_key(Some(key)).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains(SEALING_KEY_ENV) && !e.contains(key), "{e}");
    }

    #[test]
    fn config_sealing_key_from_env_wins() {
        let cfg = ok("sealingKeyFile: /does/not/exist");
        let key = SealingKey::generate_base64();
        assert!(matches!(cfg.sealing_key(Some(&key)), Ok(Some(_))));
        assert!(matches!(
            cfg.sealing_key(None),
            Err(ConfigError::SealingKeyRead { .. })
        ));
    }

    #[test]
    fn config_database_makes_postgres_the_audit_default_and_reads_the_url_secretly() {
        let dir = std::env::temp_dir().join(format!("reflow-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = "postgres://reflow:hunter2-secret@127.0.0.1:5/reflow";
        std::fs::write(dir.join("db-url"), format!("{url}\n")).unwrap();
        let cfg = Config::from_yaml(
            "database: {urlFile: db-url}\naudit: {spillDir: spill, failurePolicy: failClosed, retentionDays: 7}",
            Path::new("gw.yaml"),
            &dir,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let AuditTarget::Postgres(pg) = &cfg.audit.target else {
            panic!("{:?}", cfg.audit.target)
        };
        assert_eq!(pg.failure_policy, FailurePolicy::FailClosed);
        assert_eq!(pg.spill_dir, dir.join("spill"));
        assert_eq!(pg.retention, Some(Duration::from_secs(7 * 86_400)));
        let got = cfg.database_url(None).unwrap_or_else(|e| panic!("{e}"));
        use secrecy::ExposeSecret;
        assert_eq!(
            got.map(|u| u.expose_secret().to_owned()).as_deref(),
            Some(url)
        );
        let from_env = cfg.database_url(Some("postgres://env")).ok().flatten();
        assert_eq!(
            from_env.map(|u| u.expose_secret().to_owned()).as_deref(),
            Some("postgres://env")
        );
        assert!(!format!("{cfg:?}").contains("hunter2"));

        // Without a database the defaults stay: JSON lines on stdout, memory sessions.
        let plain = ok("");
        assert_eq!(plain.audit.target, AuditTarget::Stdout);
        assert!(matches!(plain.database_url(Some("postgres://x")), Ok(None)));
        let missing = ok("database: {}\naudit: {sink: stdout}");
        assert!(matches!(
            missing.database_url(None),
            Err(ConfigError::NoDatabaseUrl { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_durations_parse() {
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("8 hours").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}

/// Names of environments where development defaults are expected.
const DEVELOPMENT: [&str; 3] = ["development", "dev", "local"];

impl Config {
    /// The gateway's environment (`auth.environment`), `development` when unset.
    pub fn environment(&self) -> &str {
        self.auth
            .as_ref()
            .and_then(|a| a.environment.as_deref())
            .unwrap_or("development")
    }

    /// Development defaults still in use outside development, one sentence each, for the
    /// startup log. `sealing_key_from_env` says whether the key comes from the environment.
    pub fn warnings(&self, sealing_key_from_env: bool) -> Vec<String> {
        let env = self.environment();
        if DEVELOPMENT.contains(&env) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.dev.is_some() {
            out.push(format!(
                "environment {env}: the `dev` HS256 issuer is configured; anyone with its secret can mint tokens"
            ));
        }
        if self.sealing == SealingSource::None && !sealing_key_from_env {
            out.push(format!(
                "environment {env}: no sealing key; credentials are sealed with a random per-process key that other replicas cannot open"
            ));
        }
        if self.gateway.allowed_hosts.is_empty() {
            out.push(format!(
                "environment {env}: gateway.allowedHosts is empty, so any Host is served (DNS rebinding)"
            ));
        }
        if self
            .gateway
            .public_url
            .as_deref()
            .is_none_or(|u| !u.starts_with("https://"))
        {
            out.push(format!(
                "environment {env}: gateway.publicUrl is not an https:// URL"
            ));
        }
        if self.gateway.identity_tokens.signing_key_file.is_none() {
            out.push(format!(
                "environment {env}: gateway.identityTokens.signingKeyFile is unset; each replica signs forwarded identities with its own key"
            ));
        }
        if self.auth.as_ref().is_some_and(|a| !a.require_exp) {
            out.push(format!(
                "environment {env}: auth.requireExp is off; tokens without expiry are accepted"
            ));
        }
        out
    }
}

#[cfg(test)]
mod warning_tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, Path::new("c.yaml"), Path::new(""))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn config_development_defaults_warn_only_outside_development() {
        let dev = "dev: {hs256Secret: 0123456789abcdef0123456789abcdef}\n";
        assert!(
            config(dev).warnings(false).is_empty(),
            "development by default"
        );
        let prod = format!("{dev}auth: {{issuers: [], environment: production}}\n");
        let w = config(&prod).warnings(false);
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(w.iter().all(|l| l.starts_with("environment production: ")));
        assert!(w[0].contains("`dev` HS256 issuer"));
        assert_eq!(
            config(&prod).warnings(true).len(),
            4,
            "key from the environment"
        );

        let hardened = "auth: {issuers: [{issuer: https://idp, audiences: [r], discovery: true}], environment: production}\ngateway: {allowedHosts: [mcp.example.com], publicUrl: 'https://mcp.example.com', identityTokens: {signingKeyFile: id.pem}}\nsealingKeyFile: key\n";
        assert!(config(hardened).warnings(false).is_empty());
    }
}
