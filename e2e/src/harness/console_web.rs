//! A console client without a browser: cookies kept by hand (so a test can read, drop or carry
//! them), no redirects followed, and the dev-token login (login page → binding cookie and CSRF
//! field → form POST).

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::dataplane_process::DataplaneProcess;
use super::http::http_client;
use super::oidc::form_urlencoded;

/// Something serving the console: where its pages are.
pub trait ConsoleAt {
    /// `http://host:port`, without a trailing slash.
    fn console_base(&self) -> String;
}

impl ConsoleAt for DataplaneProcess {
    fn console_base(&self) -> String {
        format!("http://{}", self.addr())
    }
}

impl ConsoleAt for str {
    fn console_base(&self) -> String {
        self.trim_end_matches('/').to_owned()
    }
}

pub struct ConsoleWeb {
    pub http: reqwest::Client,
    base: String,
    /// `name=value` pairs sent as `Cookie`.
    pub cookies: Vec<(String, String)>,
}

/// The value of `name="csrf" value="..."` in a page.
pub fn csrf_in(page: &str) -> Option<String> {
    let at = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(page[at..].split('"').next()?.to_owned())
}

/// `application/x-www-form-urlencoded` escaping of one value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl ConsoleWeb {
    pub fn new(at: &(impl ConsoleAt + ?Sized)) -> Self {
        // Installs the crypto provider reqwest's rustls needs.
        let _ = http_client();
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http"),
            base: at.console_base(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn remember(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all("set-cookie") {
            let pair = v.to_str().unwrap_or_default().split(';').next();
            let Some((k, v)) = pair.and_then(|p| p.split_once('=')) else {
                continue;
            };
            self.cookies.retain(|(name, _)| name != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub async fn get(&mut self, path: &str) -> (u16, HeaderMap, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("console answers");
        self.remember(&resp);
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap_or_default())
    }

    /// POSTs a form (already encoded), with extra headers.
    pub async fn post(
        &mut self,
        path: &str,
        form: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, String) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("console answers");
        self.remember(&resp);
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap_or_default())
    }

    /// POSTs the form `fields`; the status and the `Location` it redirects to, if any.
    pub async fn post_form(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (u16, Option<String>) {
        let (status, headers, _) = self.post(path, &form_urlencoded(fields), &[]).await;
        let location = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, location)
    }

    /// Logs in with a pasted token (devLogin); returns the status of the POST (303 when in).
    pub async fn token_login(&mut self, token: &str) -> u16 {
        let (_, _, page) = self.get("/console/login").await;
        let csrf = csrf_in(&page).expect("login form csrf");
        let form = format!("token={}&csrf={csrf}", urlencode(token));
        self.post("/console/login/token", &form, &[]).await.0
    }

    /// The CSRF token of the logged-in page at `path`.
    pub async fn csrf(&mut self, path: &str) -> String {
        let (_, _, page) = self.get(path).await;
        csrf_in(&page).expect("csrf on page")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_fields_and_form_escaping() {
        let page = r#"<form><input type="hidden" name="csrf" value="a-b_c"></form>"#;
        assert_eq!(csrf_in(page).as_deref(), Some("a-b_c"));
        assert_eq!(csrf_in("<form></form>"), None);
        assert_eq!(urlencode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!("http://x:1/".console_base(), "http://x:1");
    }
}
