//! The console across replicas: two `reflow-dataplane` processes on one Postgres, each serving
//! its own manifests folder (so they serve different snapshot versions), no affinity.
//! The admin page on either lists both dataplanes with the snapshot version each serves and
//! marks a dead one stale; a login made on one replica works on the other; a tampered cookie,
//! an expired one, one sealed with another deployment's key and a logged-out one replayed on
//! the other replica are all nobody.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::console_web::{self, ConsoleWeb};
use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::{DataplaneProcess, FixtureProcess, PolicyDoc, TestPostgres};
use secrecy::SecretString;
use serde_json::json;

const DEV_SECRET: &str = "reflow-console-replicas-secret-0123456789abcdef";
const REPLICA_TOKEN: &str = "console-replica-token-0123456789abcdef";
const DEAD_AFTER_MS: u64 = 2_000;
const ADMINS: &str = "reflow-admins";
const LOGIN_AAD: &str = "reflow/console-login/v1";

fn token(user: &str, groups: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        user,
        &groups,
        &[],
        Duration::from_secs(600),
    )
    .expect("token")
}

fn manifests(fixture: &FixtureProcess, extra_policy: bool) -> String {
    let mut docs = vec![
        target_yaml("tools", "streamableHttp", &fixture.mcp_url()),
        PolicyDoc::allow("admins-all", "tools")
            .group(ADMINS)
            .rule("all", &["*"])
            .to_yaml(),
    ];
    if extra_policy {
        docs.push(
            PolicyDoc::allow("alice-echo", "tools")
                .user("alice")
                .rule("tool", &["echo"])
                .to_yaml(),
        );
    }
    docs.join("---\n")
}

fn config(dir: &Path, name: &str, key: &str, url: &str) -> PathBuf {
    std::fs::write(dir.join("sealing-key"), key).expect("key file");
    std::fs::write(dir.join("db-url"), url).expect("url file");
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\nsealingKeyFile: sealing-key\n\
             database: {{urlFile: db-url, maxConnections: 4}}\n\
             audit: {{spillDir: spill-{name}, failurePolicy: buffer}}\n\
             gateway:\n  replicas: {{heartbeatMs: 300, deadAfterMs: {DEAD_AFTER_MS}}}\n  \
             console: {{enabled: true, devLogin: true, admins: {{groups: [{ADMINS}]}}}}\n"
        ),
    )
    .expect("config");
    config
}

/// A browser without a cookie jar: the cookies are set by hand, so one can carry them to
/// another replica, tamper with them or replay them.
struct Web {
    http: reqwest::Client,
    cookie: String,
}

impl Web {
    fn new(cookie: &str) -> Self {
        reflow_e2e::harness::http_client().expect("crypto provider");
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            cookie: cookie.to_owned(),
        }
    }

    async fn get(&self, at: &DataplaneProcess, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}{path}", at.addr()))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("answer");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    async fn post(&self, at: &DataplaneProcess, path: &str, form: &str) -> reqwest::Response {
        self.http
            .post(format!("http://{}{path}", at.addr()))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .expect("answer")
    }
}

fn csrf_in(page: &str) -> String {
    console_web::csrf_in(page).expect("csrf field")
}

/// Dev-token login at `at`: the `Cookie` value of the login (`reflow_console=...`).
async fn login(at: &DataplaneProcess, token: &str) -> String {
    let mut web = ConsoleWeb::new(at);
    assert_eq!(web.token_login(token).await, 303, "token login");
    let cookie = web.cookie("reflow_console").expect("login cookie");
    format!("reflow_console={cookie}")
}

/// A login cookie sealed by hand with `key` (the format the console seals).
fn forged(key: &SealingKey, user: &str, exp: u64) -> String {
    let login = json!({
        "id": "forged-login-id", "identity": {"u": user, "g": [ADMINS], "r": []},
        "admin": true, "csrf": "forged-csrf", "exp": exp,
    });
    format!(
        "reflow_console={}",
        key.seal(LOGIN_AAD, &login.to_string()).sealed
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The admin page's row of the dataplane at `addr`, once it shows `want` (within `within`).
async fn row_with(web: &Web, at: &DataplaneProcess, addr: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = web.get(at, "/console/admin").await;
        assert_eq!(status, 200);
        let row = page
            .split("<tr")
            .find(|r| r.contains(&format!("<td>http://{addr}</td>")))
            .unwrap_or_default()
            .to_owned();
        if row.contains(want) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} for {addr} in: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The admin page's Dataplanes table as chromium shows it (README), when chromium is installed.
fn screenshot(at: &DataplaneProcess, token: &str) {
    if let Err(why) = chromium_path() {
        eprintln!("no screenshot: {why}");
        return;
    }
    let mut b = Browser::launch().expect("chromium");
    b.goto(&format!("http://{}/console/login", at.addr()))
        .expect("login page");
    b.fill("#token", token).expect("token");
    b.click("#token-login").expect("sign in");
    b.wait_for_text("What you may use", Duration::from_secs(15))
        .expect("logged in");
    b.goto(&format!("http://{}/console/admin", at.addr()))
        .expect("admin page");
    let path = reflow_e2e::harness::paths::target_dir()
        .join("console-screenshots")
        .join("admin-replicas.png");
    b.screenshot(&path).expect("screenshot");
}

#[test]
fn logins_and_snapshot_versions_across_two_replicas() {
    let pg = TestPostgres::start().expect("postgres starts");
    let url = pg.create_database("console_replicas").expect("database");
    let fixture = FixtureProcess::spawn(["--listen", "127.0.0.1:0"]).expect("fixture");
    let dir = pg.dir().join("console-replicas");
    let key_text = SealingKey::generate_base64();
    let key = SealingKey::from_base64(&key_text).expect("key");
    let mut replicas = Vec::new();
    for name in ["r0", "r1"] {
        let m = dir.join(format!("manifests-{name}"));
        std::fs::create_dir_all(&m).expect("manifests dir");
        std::fs::write(m.join("all.yaml"), manifests(&fixture, false)).expect("manifests");
        let config = config(&dir, name, &key_text, &url);
        replicas.push(
            DataplaneProcess::spawn(&m, &config, &[("REFLOW_REPLICA_TOKEN", REPLICA_TOKEN)])
                .expect("replica starts"),
        );
    }
    // r1 reloads a changed folder: it serves snapshot version 2, r0 still version 1.
    std::fs::write(
        dir.join("manifests-r1").join("all.yaml"),
        manifests(&fixture, true),
    )
    .expect("manifests");
    let (a0, a1) = (
        replicas[0].addr().to_string(),
        replicas[1].addr().to_string(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Logged in on r0, the same cookie works on r1 (no affinity, nothing shared in memory).
        let admin = Web::new(&login(&replicas[0], &token("root", &[ADMINS])).await);
        let r1_row = row_with(&admin, &replicas[1], &a1, "<td class=\"version\">2</td>").await;
        assert!(
            r1_row.contains("(this one)") && r1_row.contains("class=\"live\""),
            "{r1_row}"
        );
        let r0_row = row_with(&admin, &replicas[1], &a0, "<td class=\"version\">1</td>").await;
        assert!(!r0_row.contains("(this one)"), "{r0_row}");
        row_with(&admin, &replicas[0], &a1, "<td class=\"version\">2</td>").await;
        screenshot(&replicas[0], &token("root", &[ADMINS]));

        // Cookies nobody should get in with, on either replica.
        let mut tampered = admin.cookie.clone().into_bytes();
        let i = tampered.len() - 10;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        let other_key = SealingKey::from_base64(&SealingKey::generate_base64()).expect("key");
        // The hand-sealed format is right: with this deployment's key and a future expiry it
        // gets in, so the refusals below are about what they change.
        let good = Web::new(&forged(&key, "root", now() + 600));
        assert_eq!(good.get(&replicas[1], "/console/admin").await.0, 200);
        for (cookie, why) in [
            (tampered, "tampered"),
            (forged(&key, "root", now() - 1), "expired"),
            (
                forged(&other_key, "root", now() + 600),
                "another deployment's key",
            ),
        ] {
            for r in &replicas {
                let (status, _) = Web::new(&cookie).get(r, "/console/me").await;
                assert_eq!(status, 303, "{why} cookie at {}", r.addr());
            }
        }

        // Logged out on r1, the same cookie replayed on r0 is nobody.
        let alice = Web::new(&login(&replicas[0], &token("alice", &[])).await);
        let (status, page) = alice.get(&replicas[1], "/console/me").await;
        assert_eq!(status, 200);
        let resp = alice
            .post(
                &replicas[1],
                "/console/logout",
                &format!("csrf={}", csrf_in(&page)),
            )
            .await;
        assert_eq!(resp.status().as_u16(), 303);
        for r in &replicas {
            assert_eq!(
                alice.get(r, "/console/me").await.0,
                303,
                "replayed at {}",
                r.addr()
            );
        }
        assert_eq!(
            admin.get(&replicas[0], "/console/me").await.0,
            200,
            "others stay"
        );

        // A dataplane that stops beating is marked stale.
        replicas[1].kill();
        let row = row_with(&admin, &replicas[0], &a1, "class=\"stale\"").await;
        assert!(row.contains("<strong>stale</strong>"), "{row}");
        let row = row_with(&admin, &replicas[0], &a0, "(this one)").await;
        assert!(row.contains("class=\"live\""), "{row}");
    });
}
