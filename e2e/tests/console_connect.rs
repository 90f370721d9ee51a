//! The console's Connections section on the real `reflow-dataplane` (standalone, connections
//! kept in the manifests folder): every Target whose `userCredential` applies to the user and
//! that they have not connected has a Connect button (a CSRF-protected POST that mints a
//! connect link bound to the logged-in user and sends the browser there); once connected it
//! has a Disconnect button that removes only their own connection.

use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::console_web::{ConsoleWeb as Web, csrf_in};
use reflow_e2e::harness::gateway::target_yaml;
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

/// The Connections row of `target` on /console/me.
async fn row(web: &mut Web, target: &str) -> (String, String) {
    let (status, _, page) = web.get("/console/me").await;
    assert_eq!(status, 200);
    let row = page
        .split("<tr data-target=")
        .find(|r| r.starts_with(&format!("\"{target}\"")) && r.contains("class=\"status\""))
        .map(|r| r.split("</tr>").next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (row, csrf_in(&page).expect("csrf field"))
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
        assert_eq!(alice.token_login(&token("alice")).await, 303);
        let mut bob = Web::new(&gw);
        assert_eq!(bob.token_login(&token("bob")).await, 303);

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
            alice
                .post_form("/console/connections/connect", &form)
                .await
                .0,
            403
        );
        let (_, bob_csrf) = row(&mut bob, "e2e/gh").await;
        let form = [("target", "e2e/gh"), ("csrf", bob_csrf.as_str())];
        assert_eq!(
            alice
                .post_form("/console/connections/connect", &form)
                .await
                .0,
            403
        );
        // A Target with nothing to connect: 404.
        let form = [("target", "e2e/plain"), ("csrf", csrf.as_str())];
        assert_eq!(
            alice
                .post_form("/console/connections/connect", &form)
                .await
                .0,
            404
        );

        // Connect: to a link bound to alice; the page says so; the value is stored for her.
        let form = [("target", "e2e/gh"), ("csrf", csrf.as_str())];
        let (status, location) = alice.post_form("/console/connections/connect", &form).await;
        assert_eq!(status, 303);
        let link = location.expect("location");
        assert!(link.starts_with("/connect/"), "{link}");
        let (status, _, page) = alice.get(&link).await;
        assert_eq!(status, 200);
        assert!(page.contains("alice"), "{page}");
        let (status, _) = alice.post_form(&link, &[("value", ALICE_VALUE)]).await;
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
            bob.post_form("/console/connections/disconnect", &form)
                .await
                .0,
            404
        );
        assert!(row(&mut alice, "e2e/gh").await.0.contains(">connected<"));

        // Alice disconnects: her connection is gone, the Connect button is back.
        let (_, csrf) = row(&mut alice, "e2e/gh").await;
        let form = [("target", "e2e/gh"), ("csrf", csrf.as_str())];
        assert_eq!(
            alice
                .post_form("/console/connections/disconnect", &form)
                .await
                .0,
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
