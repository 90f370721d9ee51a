//! The command-line shape of minting (`reflow-dataplane token`, `reflow-controller token`): one
//! set of flags, one validation, whichever binary mints.

use std::time::Duration;

use clap::Args;

use reflow_crds::token::{ScopeError, TokenRequest, TokenScope};

/// A duration such as `8h`, `30m`, `90s`, `1d` or plain seconds (`3600`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 8h, 30m, 90s or 1d)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Who a token names, for how long, and what it is narrowed to.
#[derive(Args, Debug, Clone)]
pub struct MintArgs {
    #[arg(long, env = "REFLOW_TOKEN_USER")]
    pub user: String,
    #[arg(long = "group", env = "REFLOW_TOKEN_GROUPS", value_delimiter = ',')]
    pub groups: Vec<String>,
    #[arg(long = "role", env = "REFLOW_TOKEN_ROLES", value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime: 8h, 30m, 90s, 1d or seconds.
    #[arg(long, env = "REFLOW_TOKEN_TTL", default_value = "8h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Scope: only these targets (`namespace/name` globs; repeat or comma-separate).
    #[arg(long = "target", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Scope: only these permissions (`list`, `call`).
    #[arg(long = "permission", value_delimiter = ',')]
    pub permissions: Vec<String>,
    /// Scope: only from these source addresses (CIDR ranges).
    #[arg(long = "source-range", value_delimiter = ',')]
    pub source_ranges: Vec<String>,
    /// Scope: only within this daily UTC window, e.g. `08:00-18:00`.
    #[arg(long)]
    pub window: Option<String>,
    /// The gateway environment the token is for (`env` claim).
    #[arg(long)]
    pub env: Option<String>,
    /// Valid only after this delay (`nbf`): 10m, 1h…
    #[arg(long, value_parser = parse_duration)]
    pub not_before: Option<Duration>,
}

impl MintArgs {
    /// The request these flags describe; a scope the gateway would refuse is refused here.
    pub fn request(&self) -> Result<TokenRequest, ScopeError> {
        let scope = TokenScope::claim(
            &self.targets,
            &self.permissions,
            &self.source_ranges,
            self.window.as_deref(),
        )?;
        Ok(TokenRequest {
            user: self.user.clone(),
            groups: self.groups.clone(),
            roles: self.roles.clone(),
            ttl: self.ttl,
            not_before_secs: self.not_before.map_or(0, |d| d.as_secs()),
            env: self.env.clone(),
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(28_800)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
