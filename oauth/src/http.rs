//! The one HTTP client every OAuth request goes through: no redirects, bounded time and body,
//! `https` only (plain `http` only to loopback hosts).

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use serde::de::DeserializeOwned;

use crate::{OAuthError, Result};

/// Default bound on any response body (metadata, token responses, registration answers).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Default bound on one whole request (connect, send, read).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bounded, redirect-free HTTP client for OAuth endpoints. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OAuthHttp {
    client: reqwest::Client,
    max_body: usize,
}

/// A response whose body was read within the bound.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

fn url_err(url: &str, why: &'static str) -> OAuthError {
    OAuthError::Url {
        url: url.chars().take(200).collect(),
        why,
    }
}

/// Whether the URL's host is a loopback name or address (`localhost`, 127.0.0.0/8, `::1`).
fn loopback_host(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Parses `raw` as an OAuth endpoint: `https`, or `http` to a loopback host; no credentials in
/// the URL, no fragment.
pub fn endpoint(raw: &str) -> Result<Url> {
    let url = Url::parse(raw).map_err(|_| url_err(raw, "not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if loopback_host(&url) => {}
        "http" => return Err(url_err(raw, "plain http is allowed to loopback hosts only")),
        _ => return Err(url_err(raw, "not an http(s) URL")),
    }
    if url.host().is_none() {
        return Err(url_err(raw, "no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(url_err(raw, "credentials in the URL"));
    }
    if url.fragment().is_some() {
        return Err(url_err(raw, "a fragment"));
    }
    Ok(url)
}

/// `application/x-www-form-urlencoded` for `pairs`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut url = Url::parse("http://form.invalid/").expect("a constant URL parses");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

impl Default for OAuthHttp {
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT, DEFAULT_MAX_BODY)
    }
}

impl OAuthHttp {
    pub fn new(timeout: Duration, max_body: usize) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { client, max_body }
    }

    async fn finish(&self, url: &Url, sent: reqwest::RequestBuilder) -> Result<Answer> {
        let transport = |e: reqwest::Error| OAuthError::Transport {
            url: url.to_string(),
            // Without the URL again, and never a body: reqwest's Display can carry neither.
            message: e.without_url().to_string(),
        };
        let mut resp = sent.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(OAuthError::TooLarge {
                url: url.to_string(),
                limit: self.max_body,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(OAuthError::TooLarge {
                    url: url.to_string(),
                    limit: self.max_body,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// GET `url` expecting a 200 JSON document.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T> {
        let req = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/json");
        let answer = self.finish(url, req).await?;
        if answer.status != 200 {
            return Err(OAuthError::Status {
                url: url.to_string(),
                status: answer.status,
            });
        }
        parse_json(url, &answer.body)
    }

    /// POST a form body to `url` with extra headers (client authentication).
    pub async fn post_form(
        &self,
        url: &Url,
        headers: HeaderMap,
        pairs: &[(&str, &str)],
    ) -> Result<Answer> {
        let req = self
            .client
            .post(url.clone())
            .headers(headers)
            .header(ACCEPT, "application/json")
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .body(form_encode(pairs));
        self.finish(url, req).await
    }

    /// POST a JSON body to `url`.
    pub async fn post_json(&self, url: &Url, body: &serde_json::Value) -> Result<Answer> {
        let req = self
            .client
            .post(url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.finish(url, req).await
    }

    /// What an unauthenticated MCP request to `url` answers: the `WWW-Authenticate` of a 401,
    /// if any (the start of RFC 9728 discovery).
    pub async fn probe_www_authenticate(&self, url: &Url) -> Result<Option<String>> {
        let req = self
            .client
            .post(url.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(
                r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"reflow-oauth-probe","version":"0"}}}"#,
            );
        let answer = self.finish(url, req).await?;
        if answer.status != 401 {
            return Ok(None);
        }
        Ok(answer
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }
}

/// `body` as `T`, or a [`OAuthError::Json`] that names the URL and never quotes the body.
pub fn parse_json<T: DeserializeOwned>(url: &Url, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| OAuthError::Json {
        url: url.to_string(),
        message: format!(
            "{} at line {} column {}",
            e.classify_str(),
            e.line(),
            e.column()
        ),
    })
}

trait Classify {
    fn classify_str(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected content",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}
