//! `e2e/js/oidc-provider.cjs` as a peer: a real OpenID provider / OAuth authorization server
//! (npm `oidc-provider`) on a free loopback port, configured per test; stopped by PID on drop.
//!
//! It knows three users: `alice`, `bob` and `admin` (group [`ADMIN_GROUP`]); each token carries
//! `sub`, `email` and `groups`. Access tokens requested with an RFC 8707 `resource` are RS256 JWTs
//! with `aud` = that resource, verifiable through the provider's discovery document and JWKS.
//! Login and consent are oidc-provider's dev pages: a browser fills `login` (any of the users)
//! and `password` (not checked) and presses the single submit button on each page;
//! [`OidcProvider::login_with_forms`] does the same over plain HTTP for tests without a browser.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{HarnessError, Result};
use super::net::{accepts, free_loopback_port, loopback, poll_until};
use super::node::{node_bin, npm_package};
use super::paths;
use super::process::{ManagedChild, SpawnOptions};

/// The pinned provider. 9.x prints an "unsupported runtime" notice on Node 20 and works.
pub const OIDC_PROVIDER_SPEC: &str = "oidc-provider@9.13.3";
/// The group the built-in `admin` user is in.
pub const ADMIN_GROUP: &str = "reflow-admins";
/// The built-in users.
pub const ACCOUNTS: [&str; 3] = ["alice", "bob", "admin"];
/// RFC 8693's grant type, for a client's `grant_types`.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SPAWN_ATTEMPTS: usize = 3;
const MAX_REDIRECTS: usize = 12;

/// One registered client. Confidential clients authenticate with `client_secret_basic`.
#[derive(Clone, Debug, Serialize)]
pub struct OidcClient {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
}

impl OidcClient {
    /// A confidential client (`client_secret_basic`) with code + refresh_token grants.
    pub fn confidential(id: &str, secret: &str) -> Self {
        Self {
            client_id: id.to_owned(),
            client_secret: Some(secret.to_owned()),
            redirect_uris: Vec::new(),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        }
    }

    /// A public client (no secret, PKCE only) with code + refresh_token grants.
    pub fn public(id: &str) -> Self {
        Self {
            client_secret: None,
            ..Self::confidential(id, "")
        }
    }

    pub fn redirect_uri(mut self, uri: &str) -> Self {
        self.redirect_uris.push(uri.to_owned());
        self
    }

    /// Adds a grant type (e.g. [`TOKEN_EXCHANGE_GRANT`], `client_credentials`).
    pub fn grant_type(mut self, grant: &str) -> Self {
        self.grant_types.push(grant.to_owned());
        self
    }
}

/// What a test configures before start.
#[derive(Clone, Debug, Default)]
pub struct OidcProviderBuilder {
    clients: Vec<OidcClient>,
    access_token_ttl: Option<Duration>,
    refresh_token_ttl: Option<Duration>,
    exchange_token_ttl: Option<Duration>,
    registration: bool,
    resource_scope: Option<String>,
    client_id_metadata_documents: bool,
}

impl OidcProviderBuilder {
    pub fn client(mut self, client: OidcClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Lifetime of access tokens (default 300 s); short values exercise refresh.
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = Some(ttl);
        self
    }

    pub fn refresh_token_ttl(mut self, ttl: Duration) -> Self {
        self.refresh_token_ttl = Some(ttl);
        self
    }

    /// Lifetime of RFC 8693 exchanged tokens (default: the access token TTL).
    pub fn exchange_token_ttl(mut self, ttl: Duration) -> Self {
        self.exchange_token_ttl = Some(ttl);
        self
    }

    /// Opens RFC 7591 dynamic client registration at `/reg` (no initial access token).
    pub fn dynamic_registration(mut self) -> Self {
        self.registration = true;
        self
    }

    /// Advertises `client_id_metadata_document_supported` and accepts a loopback http(s) URL as
    /// a client id by fetching its metadata document (whose `client_id` must be that URL);
    /// each fetch shows in [`OidcProvider::events`] as kind `cimd_fetch`.
    pub fn client_id_metadata_documents(mut self) -> Self {
        self.client_id_metadata_documents = true;
        self
    }

    /// The scopes every resource server accepts (space separated; default `mcp`).
    pub fn resource_scope(mut self, scope: &str) -> Self {
        self.resource_scope = Some(scope.to_owned());
        self
    }

    /// Installs the pinned package (cached), starts the provider, waits (bounded) until it accepts.
    pub fn start(self) -> Result<OidcProvider> {
        let prefix = npm_package(OIDC_PROVIDER_SPEC)?;
        let script = paths::js_dir().join("oidc-provider.cjs");
        let preload = paths::js_dir().join("force-loopback.cjs");
        let test_secret = uuid::Uuid::new_v4().simple().to_string();
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs().max(1));
        let mut last_failure = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            let port = free_loopback_port()?;
            let issuer = format!("http://127.0.0.1:{port}");
            let config = json!({
                "issuer": issuer,
                "test_secret": test_secret,
                "clients": self.clients,
                "access_token_ttl": secs(self.access_token_ttl),
                "refresh_token_ttl": secs(self.refresh_token_ttl),
                "exchange_token_ttl": secs(self.exchange_token_ttl),
                "registration": self.registration,
                "resource_scope": self.resource_scope,
                "client_id_metadata_documents": self.client_id_metadata_documents,
            });
            let mut cmd = Command::new(node_bin());
            cmd.env("REFLOW_OIDC_CONFIG", config.to_string())
                .arg("--require")
                .arg(&preload)
                .arg(&script)
                .arg("--provider")
                .arg(&prefix)
                .arg("--port")
                .arg(port.to_string());
            let mut child =
                ManagedChild::spawn("oidc-provider", &mut cmd, SpawnOptions::default())?;
            let addr = loopback(port);
            let ready = poll_until(READY_TIMEOUT, || {
                if child.try_status().is_some() {
                    Some(false)
                } else {
                    accepts(addr).then_some(true)
                }
            });
            match ready {
                Some(true) => {
                    return Ok(OidcProvider {
                        child,
                        issuer,
                        test_secret,
                    });
                }
                Some(false) => last_failure = format!("exited early:\n{}", child.output()),
                None => {
                    return Err(HarnessError::NotReady {
                        what: "oidc-provider".to_owned(),
                        detail: format!("nothing listening on {addr}\n{}", child.output()),
                    });
                }
            }
        }
        Err(HarnessError::NotReady {
            what: "oidc-provider".to_owned(),
            detail: last_failure,
        })
    }
}

/// Something the provider did, as `/test/events` reports it (never a token).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct OidcEvent {
    /// `token` (a token-endpoint success), `revoked` (a grant revoked through RFC 7009) or
    /// `cimd_fetch` (a client ID metadata document fetched and accepted; `client_id` is its URL).
    pub kind: String,
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub account: Option<String>,
}

/// A running provider; stopped by PID on drop.
#[derive(Debug)]
pub struct OidcProvider {
    child: ManagedChild,
    issuer: String,
    test_secret: String,
}

impl OidcProvider {
    pub fn builder() -> OidcProviderBuilder {
        OidcProviderBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): the `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `<issuer>/.well-known/openid-configuration` (the RFC 8414 document is the same content).
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    /// Its output so far (for diagnostics).
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// A JWT access token for `sub` with `aud` = `audience`, signed like the token endpoint's
    /// (same key, `iss`, claims), without a browser: the caller side of gateway tests.
    pub async fn mint(&self, sub: &str, audience: &str, ttl: Option<Duration>) -> Result<String> {
        let body = json!({
            "sub": sub,
            "aud": audience,
            "ttl": ttl.map(|t| t.as_secs().max(1)),
        });
        let resp = super::http_client()?
            .post(format!("{}/test/mint", self.issuer))
            .header("x-test-secret", &self.test_secret)
            .json(&body)
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("oidc-provider mint: {e}")))?;
        let value: Value = json_body(resp, "mint").await?;
        value["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| HarnessError::Other(format!("oidc-provider mint answered {value}")))
    }

    /// Access tokens for `resource` are opaque from now on (introspectable at
    /// `<issuer>/token/introspection`, so a revoked grant is refused at once).
    pub async fn opaque_resource(&self, resource: &str) -> Result<()> {
        let resp = super::http_client()?
            .post(format!("{}/test/opaque", self.issuer))
            .header("x-test-secret", &self.test_secret)
            .json(&json!({"resource": resource}))
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("oidc-provider opaque: {e}")))?;
        json_body(resp, "opaque").await.map(|_| ())
    }

    /// RFC 7662 introspection of `token` as the confidential client `client_id`: whether the
    /// AS still holds it `active`.
    pub async fn active(&self, token: &str, client_id: &str, client_secret: &str) -> Result<bool> {
        let resp = super::http_client()?
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth(client_id, Some(client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_urlencoded(&[("token", token)]))
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("oidc-provider introspection: {e}")))?;
        let value = json_body(resp, "introspection").await?;
        Ok(value["active"] == true)
    }

    /// Every token issued and grant revoked so far, in order.
    pub async fn events(&self) -> Result<Vec<OidcEvent>> {
        let resp = super::http_client()?
            .get(format!("{}/test/events", self.issuer))
            .header("x-test-secret", &self.test_secret)
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("oidc-provider events: {e}")))?;
        let value = json_body(resp, "events").await?;
        serde_json::from_value(value)
            .map_err(|e| HarnessError::Other(format!("oidc-provider events: {e}")))
    }

    /// Follows `authorize_url` the way a browser would (redirects, cookies, the login form with
    /// `user`, the consent form) until the provider redirects to a URL starting with
    /// `redirect_prefix`; returns that URL (carrying `code` and `state`), not following it.
    pub async fn login_with_forms(
        &self,
        authorize_url: &str,
        user: &str,
        redirect_prefix: &str,
    ) -> Result<String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HarnessError::Other(format!("http client: {e}")))?;
        let mut cookies: BTreeMap<String, String> = BTreeMap::new();
        let mut next = Step::Get(authorize_url.to_owned());
        for _ in 0..MAX_REDIRECTS {
            let (url, req) = match &next {
                Step::Get(url) => (url.clone(), client.get(url)),
                Step::Post(url, form) => {
                    let pairs: Vec<(&str, &str)> =
                        form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let req = client
                        .post(url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(form_urlencoded(&pairs));
                    (url.clone(), req)
                }
            };
            if url.starts_with(redirect_prefix) {
                return Ok(url);
            }
            let cookie = cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let resp = req
                .header("cookie", cookie)
                .send()
                .await
                .map_err(|e| HarnessError::Other(format!("login at {url}: {e}")))?;
            remember_cookies(&resp, &mut cookies);
            next = next_step(resp, &url, user).await?;
        }
        Err(HarnessError::Other(format!(
            "login did not reach {redirect_prefix} within {MAX_REDIRECTS} steps"
        )))
    }
}

/// `application/x-www-form-urlencoded` for `pairs` (the workspace's reqwest has no `form`).
pub fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("a constant URL parses");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

enum Step {
    Get(String),
    Post(String, Vec<(String, String)>),
}

fn remember_cookies(resp: &reqwest::Response, cookies: &mut BTreeMap<String, String>) {
    for value in resp.headers().get_all("set-cookie") {
        let Ok(text) = value.to_str() else { continue };
        let pair = text.split(';').next().unwrap_or_default();
        if let Some((name, val)) = pair.split_once('=') {
            cookies.insert(name.trim().to_owned(), val.trim().to_owned());
        }
    }
}

async fn next_step(resp: reqwest::Response, url: &str, user: &str) -> Result<Step> {
    let base = reqwest::Url::parse(url).map_err(|e| HarnessError::Other(e.to_string()))?;
    let join = |href: &str| {
        base.join(href)
            .map(String::from)
            .map_err(|e| HarnessError::Other(format!("bad link {href}: {e}")))
    };
    if resp.status().is_redirection() {
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| HarnessError::Other(format!("redirect without location at {url}")))?
            .to_owned();
        return Ok(Step::Get(join(&location)?));
    }
    let status = resp.status();
    let html = resp.text().await.unwrap_or_default();
    let action = html
        .split("action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| HarnessError::Other(format!("no form at {url} ({status}): {html}")))?;
    let action = join(&action.replace("&amp;", "&"))?;
    let form = if html.contains("name=\"login\"") {
        vec![
            ("prompt".to_owned(), "login".to_owned()),
            ("login".to_owned(), user.to_owned()),
            ("password".to_owned(), "password".to_owned()),
        ]
    } else {
        vec![("prompt".to_owned(), "consent".to_owned())]
    };
    Ok(Step::Post(action, form))
}

async fn json_body(resp: reqwest::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(HarnessError::Other(format!(
            "oidc-provider {what}: {status}: {text}"
        )));
    }
    serde_json::from_str(&text)
        .map_err(|e| HarnessError::Other(format!("oidc-provider {what}: {e}")))
}
