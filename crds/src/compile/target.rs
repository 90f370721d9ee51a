//! Target → CompiledTarget routing: transport checks (the same rules the CRD's CEL enforces, for
//! standalone mode), effective prefix, timeouts and lifetimes.

use std::sync::Arc;

use crate::api::{Isolation, Target, TargetSpec, Transport};
use crate::snapshot::{EffectiveLifetimes, EffectiveTimeouts, ToolPins, Upstream};

pub(super) struct Routing {
    pub prefix: Arc<str>,
    pub upstream: Upstream,
    pub timeouts: EffectiveTimeouts,
    pub lifetimes: EffectiveLifetimes,
    pub pinning: Option<ToolPins>,
}

pub(super) fn valid_prefix(p: &str) -> bool {
    let bytes = p.as_bytes();
    !p.is_empty()
        && p.len() <= 32
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

type Refusal = (&'static str, String);

/// The effective prefix and upstream of a Target, or the reason it is not accepted.
pub(super) fn routing(t: &Target, name: &str) -> Result<Routing, Refusal> {
    let s = &t.spec;
    check_identity_header(s)?;
    let prefix = effective_prefix(s, name)?;
    let upstream = match s.transport {
        Transport::StreamableHttp | Transport::Sse | Transport::Auto => http_upstream(s)?,
        Transport::Stdio => stdio_upstream(s)?,
        Transport::Kubernetes => kubernetes_upstream(s)?,
    };
    if s.isolation != Isolation::Shared
        && !matches!(s.transport, Transport::Stdio | Transport::Kubernetes)
    {
        return Err((
            "InvalidIsolation",
            "per-identity isolation needs a process to isolate: use the stdio or kubernetes transport".to_owned(),
        ));
    }
    let d = EffectiveTimeouts::default();
    let timeouts = s.timeouts.as_ref().map_or(d, |t| EffectiveTimeouts {
        connect_ms: t.connect_ms.unwrap_or(d.connect_ms),
        request_ms: t.request_ms.unwrap_or(d.request_ms),
        init_ms: t.init_ms.unwrap_or(d.init_ms),
    });
    let dl = EffectiveLifetimes::default();
    let lifetimes = s.lifetimes.as_ref().map_or(dl, |l| EffectiveLifetimes {
        idle_seconds: l.idle_seconds.unwrap_or(dl.idle_seconds),
        max_seconds: l.max_seconds.or(dl.max_seconds),
    });
    // An unreadable pin set refuses the Target (not served) rather than serving unpinned.
    let pinning = match &s.tool_pinning {
        Some(p) => Some(
            ToolPins::new(
                p.mode.into(),
                p.pins.iter().map(|d| (d.name.as_str(), d.digest.as_str())),
            )
            .map_err(|e| ("InvalidToolPins", format!("toolPinning: {e}")))?,
        ),
        None => None,
    };
    Ok(Routing {
        prefix: prefix.into(),
        upstream,
        timeouts,
        lifetimes,
        pinning,
    })
}

/// `identityForwarding.jwt.header` must be an HTTP token and no header the gateway owns.
fn check_identity_header(s: &TargetSpec) -> Result<(), Refusal> {
    let Some(header) = s
        .identity_forwarding
        .as_ref()
        .and_then(|f| f.jwt.as_ref())
        .and_then(|j| j.header.as_deref())
    else {
        return Ok(());
    };
    let token = !header.is_empty()
        && header.len() <= 128
        && header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&*+.^_|~`-".contains(&b));
    const RESERVED: [&str; 9] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "mcp-session-id",
        "mcp-protocol-version",
        "cookie",
    ];
    if !token || RESERVED.contains(&header.to_ascii_lowercase().as_str()) {
        return Err((
            "InvalidIdentityHeader",
            format!(
                "identityForwarding.jwt.header {header:?} must be an HTTP token and not a hop-by-hop or MCP protocol header"
            ),
        ));
    }
    Ok(())
}

/// `spec.prefix`, or the name with dots as dashes.
fn effective_prefix(s: &TargetSpec, name: &str) -> Result<String, Refusal> {
    match &s.prefix {
        Some(p) if valid_prefix(p) => Ok(p.clone()),
        Some(p) => Err((
            "InvalidPrefix",
            format!(
                "prefix {p:?} must be 1-32 lower-case letters, digits or '-', not starting or ending with '-'"
            ),
        )),
        None => {
            let derived = name.replace('.', "-");
            if !valid_prefix(&derived) {
                return Err((
                    "InvalidPrefix",
                    format!(
                        "the name {name:?} does not make a valid default prefix (1-32 of [a-z0-9-]); set spec.prefix"
                    ),
                ));
            }
            Ok(derived)
        }
    }
}

/// A field set on a transport that does not use it is refused, not ignored.
fn only(field: bool, what: &str, transports: &str) -> Result<(), Refusal> {
    if field {
        Err((
            "InvalidField",
            format!("{what} is only valid for the {transports} transport"),
        ))
    } else {
        Ok(())
    }
}

fn env(s: &TargetSpec) -> Vec<(Arc<str>, Arc<str>)> {
    s.env
        .iter()
        .map(|e| (Arc::from(e.name.as_str()), Arc::from(e.value.as_str())))
        .collect()
}

/// The URL of an HTTP transport: http(s), with a host, no whitespace.
fn http_url(s: &TargetSpec, transport: &str) -> Result<Arc<str>, Refusal> {
    match &s.url {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            let host = u
                .split_once("://")
                .map_or("", |(_, rest)| rest)
                .split(['/', '?', '#'])
                .next()
                .unwrap_or_default();
            if host.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err((
                    "InvalidURL",
                    format!("url {u:?} must name a host and contain no whitespace"),
                ));
            }
            Ok(u.as_str().into())
        }
        Some(u) => Err((
            "InvalidURL",
            format!("url {u:?} must start with http:// or https://"),
        )),
        None => Err((
            "MissingURL",
            format!("url is required for the {transport} transport"),
        )),
    }
}

fn http_upstream(s: &TargetSpec) -> Result<Upstream, Refusal> {
    only(s.command.is_some(), "command", "stdio")?;
    only(s.sandbox.is_some(), "sandbox", "stdio")?;
    only(s.pod.is_some(), "pod", "kubernetes")?;
    Ok(match s.transport {
        Transport::Sse => Upstream::Sse {
            url: http_url(s, "sse")?,
        },
        Transport::Auto => Upstream::Auto {
            url: http_url(s, "auto")?,
        },
        _ => Upstream::StreamableHttp {
            url: http_url(s, "streamableHttp")?,
        },
    })
}

fn stdio_upstream(s: &TargetSpec) -> Result<Upstream, Refusal> {
    only(s.url.is_some(), "url", "streamableHttp, sse and auto")?;
    only(s.pod.is_some(), "pod", "kubernetes")?;
    let command = match &s.command {
        Some(c) if !c.trim().is_empty() => c.as_str().into(),
        _ => {
            return Err((
                "MissingCommand",
                "command is required for the stdio transport".to_owned(),
            ));
        }
    };
    if let Some(bad) = s
        .sandbox
        .iter()
        .flat_map(|b| &b.read_only_paths)
        .find(|p| !p.starts_with('/') || p.split('/').any(|c| c == ".."))
    {
        return Err((
            "InvalidSandbox",
            format!("sandbox.readOnlyPaths entry {bad:?} must be an absolute path without '..'"),
        ));
    }
    Ok(Upstream::Stdio {
        command,
        args: s.args.iter().map(|a| a.as_str().into()).collect(),
        env: env(s),
        sandbox: super::convert::stdio_sandbox(s.sandbox.as_ref()),
    })
}

fn kubernetes_upstream(s: &TargetSpec) -> Result<Upstream, Refusal> {
    only(s.url.is_some(), "url", "streamableHttp, sse and auto")?;
    only(s.command.is_some(), "command", "stdio")?;
    only(s.sandbox.is_some(), "sandbox", "stdio")?;
    let pod = match &s.pod {
        Some(p) if p.template.is_object() => {
            let forbidden = super::pod_security::violations(&p.template);
            if !forbidden.is_empty() {
                return Err((
                    "PodTemplateNotRestricted",
                    super::pod_security::describe(&forbidden),
                ));
            }
            p.into()
        }
        Some(_) => {
            return Err((
                "InvalidPod",
                "pod.template must be a PodTemplateSpec object".to_owned(),
            ));
        }
        None => {
            return Err((
                "MissingPod",
                "pod is required for the kubernetes transport".to_owned(),
            ));
        }
    };
    Ok(Upstream::Kubernetes { pod, env: env(s) })
}

/// The `Sandboxed` condition of a STDIO Target: True when its children are confined, False (and
/// said loudly) when the Target turned the sandbox off. `None` for other transports.
pub(super) fn sandbox_condition(r: &Routing) -> Option<(bool, &'static str, String)> {
    let Upstream::Stdio { sandbox, .. } = &r.upstream else {
        return None;
    };
    Some(if sandbox.enforce {
        (
            true,
            "Enforced",
            "children run under Landlock, seccomp and resource limits".to_owned(),
        )
    } else {
        (
            false,
            "SandboxOff",
            "sandbox.mode is off: children run unconfined and can read what the gateway can"
                .to_owned(),
        )
    })
}
