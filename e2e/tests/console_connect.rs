//! The console's Connections section on the real `reflow-dataplane` (standalone, connections
//! kept in the manifests folder): every Target whose `userCredential` applies to the user and
//! that they have not connected has a Connect button (a CSRF-protected POST that mints a
//! connect link bound to the logged-in user and sends the browser there); once connected it
//! has a Disconnect button that removes only their own connection.

use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::oidc::form_urlencoded;
use reflow_e2e::harness::{DataplaneProcess, FixtureProcess, PolicyDoc};
use secrecy::SecretString;

const DEV_SECRET: &str = "console-connect-dev-secret-0123456789abcdef";
const ALICE_VALUE: &str = "ghp_alice_console_connect_0123";

fn token(user: &str) -> String {
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        user,
        &[],
        &[],
        Duration::from_secs(600),
    )
    .expect("token")
}

struct Web {
    http: reqwest::Client,
    base: String,
    cookies: Vec<String>,
}

impl Web {
    fn new(gw: &DataplaneProcess) -> Self {
        reflow_e2e::harness::http_client().expect("crypto provider");
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: format!("http://{}", gw.addr()),
            cookies: Vec::new(),
        }
    }

    fn remember(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all("set-cookie") {
            let pair = v
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default();
            let Some((k, val)) = pair.split_once('=') else {
                continue;
            };
            self.cookies.retain(|c| !c.starts_with(&format!("{k}=")));
            if !val.is_empty() {
                self.cookies.push(pair.to_owned());
            }
        }
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookies.join("; "))
            .send()
            .await
            .expect("answer");
        self.remember(&resp);
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, Option<String>) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookies.join("; "))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_urlencoded(form))
            .send()
            .await
            .expect("answer");
        self.remember(&resp);
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (resp.status().as_u16(), location)
    }

    async fn login(&mut self, token: &str) {
        let (_, page) = self.get("/console/login").await;
        let csrf = csrf_in(&page);
        let (status, _) = self
            .post("/console/login/token", &[("token", token), ("csrf", &csrf)])
            .await;
        assert_eq!(status, 303);
    }
}

fn csrf_in(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    page[at..].split('"').next().expect("csrf").to_owned()
}

/// The Connections row of `target` on /console/me.
async fn row(web: &mut Web, target: &str) -> (String, String) {
    let (status, page) = web.get("/console/me").await;
    assert_eq!(status, 200);
    let row = page
        .split("<tr data-target=")
        .find(|r| r.starts_with(&format!("\"{target}\"")) && r.contains("class=\"status\""))
        .map(|r| r.split("</tr>").next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (row, csrf_in(&page))
}

/// The Connections section as chromium shows it (README), when chromium is installed.
fn screenshot(gw: &DataplaneProcess, token: &str) {
    if let Err(why) = chromium_path() {
        eprintln!("no screenshot: {why}");
        return;
    }
    let mut b = Browser::launch().expect("chromium");
    b.goto(&format!("http://{}/console/login", gw.addr()))
        .expect("login page");
    b.fill("#token", token).expect("token");
    b.click("#token-login").expect("sign in");
    b.wait_for_text("Connections", Duration::from_secs(15))
        .expect("logged in");
    let path = reflow_e2e::harness::paths::target_dir()
        .join("console-screenshots")
        .join("connections.png");
    b.screenshot(&path).expect("screenshot");
}

#[test]
fn connect_buttons_mint_links_for_the_logged_in_user_and_disconnect_their_own() {
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "gh"]).expect("fixture");
    let dir = std::env::temp_dir().join(format!(
        "reflow-console-connect-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    let gh = target_yaml("gh", "streamableHttp", &fixture.mcp_url())
        + "  userCredential:\n    mode: secret\n    displayName: GitHub\n    inject: {header: Authorization, prefix: 'token '}\n";
    let plain = target_yaml("plain", "streamableHttp", &fixture.mcp_url());
    let docs = [
        gh,
        plain,
        PolicyDoc::allow("gh-all", "gh")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
        PolicyDoc::allow("plain-all", "plain")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    ];
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).expect("manifests");
    std::fs::write(dir.join("sealing-key"), SealingKey::generate_base64()).expect("key");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\nsealingKeyFile: sealing-key\n\
             gateway:\n  console: {{enabled: true, devLogin: true}}\n"
        ),
    )
    .expect("config");
    let gw = DataplaneProcess::spawn(&manifests, &config, &[]).expect("gateway");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut alice = Web::new(&gw);
        alice.login(&token("alice")).await;
        let mut bob = Web::new(&gw);
        bob.login(&token("bob")).await;

        // Not connected: a Connect button, no Disconnect; a Target without userCredential is
        // not listed.
        let (gh_row, csrf) = row(&mut alice, "e2e/gh").await;
        assert!(
            gh_row.contains("not connected") && gh_row.contains("class=\"connect\""),
            "{gh_row}"
        );
        assert!(!gh_row.contains("class=\"disconnect\""), "{gh_row}");
        assert!(row(&mut alice, "e2e/plain").await.0.is_empty());
        screenshot(&gw, &token("alice"));

        // The button's POST needs the login's CSRF token.
        let form = [("target", "e2e/gh"), ("csrf", "wrong")];
        assert_eq!(
            alice.post("/console/connections/connect", &form).await.0,
            403
        );
        let (_, bob_csrf) = row(&mut bob, "e2e/gh").await;
        let form = [("target", "e2e/gh"), ("csrf", bob_csrf.as_str())];
        assert_eq!(
            alice.post("/console/connections/connect", &form).await.0,
            403
        );
        // A Target with nothing to connect: 404.
        let form = [("target", "e2e/plain"), ("csrf", csrf.as_str())];
        assert_eq!(
            alice.post("/console/connections/connect", &form).await.0,
            404
        );

        // Connect: to a link bound to alice; the page says so; the value is stored for her.
        let form = [("target", "e2e/gh"), ("csrf", csrf.as_str())];
        let (status, location) = alice.post("/console/connections/connect", &form).await;
        assert_eq!(status, 303);
        let link = location.expect("location");
        assert!(link.starts_with("/connect/"), "{link}");
        let (status, page) = alice.get(&link).await;
        assert_eq!(status, 200);
        assert!(page.contains("alice"), "{page}");
        let (status, _) = alice.post(&link, &[("value", ALICE_VALUE)]).await;
        assert!(status < 400, "connect form: {status}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let gh_row = loop {
            let (r, _) = row(&mut alice, "e2e/gh").await;
            if r.contains(">connected<") || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            gh_row.contains(">connected<") && gh_row.contains("class=\"disconnect\""),
            "{gh_row}"
        );
        assert!(!gh_row.contains(ALICE_VALUE));

        // Bob is still not connected, and cannot remove alice's connection.
        let (bob_row, bob_csrf) = row(&mut bob, "e2e/gh").await;
        assert!(bob_row.contains("not connected"), "{bob_row}");
        let form = [("target", "e2e/gh"), ("csrf", bob_csrf.as_str())];
        assert_eq!(
            bob.post("/console/connections/disconnect", &form).await.0,
            404
        );
        assert!(row(&mut alice, "e2e/gh").await.0.contains(">connected<"));

        // Alice disconnects: her connection is gone, the Connect button is back.
        let (_, csrf) = row(&mut alice, "e2e/gh").await;
        let form = [("target", "e2e/gh"), ("csrf", csrf.as_str())];
        assert_eq!(
            alice.post("/console/connections/disconnect", &form).await.0,
            303
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (r, _) = row(&mut alice, "e2e/gh").await;
            if r.contains("not connected") && r.contains("class=\"connect\"") {
                break;
            }
            assert!(Instant::now() < deadline, "still connected: {r}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
