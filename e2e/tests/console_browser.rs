//! The web console in a real headless chromium, logged in through a real oidc-provider:
//! alice sees her tools and activity and not bob's; bob's direct URLs to alice's rows get 404;
//! the admin's live view shows a call made during the test within 2 s; a hostile tool name is
//! shown as text; ending a session in the console makes the client's next request 404.
//! Screenshots of every page land in target/console-screenshots/ (see the README).

use std::time::{Duration, Instant};

use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider};
use serde_json::json;

mod console_support;
use console_support::{ConsoleGw, Mcp, Options, screenshot_path};

const WAIT: Duration = Duration::from_secs(15);

/// Logs `user` in through the IdP's login and consent pages; ends on /console/me.
fn oidc_login(b: &mut Browser, gw: &ConsoleGw, user: &str, shot: Option<&str>) {
    b.new_context().expect("fresh browser context");
    b.goto(&gw.url("/console/login")).expect("login page");
    if let Some(name) = shot {
        b.screenshot(&screenshot_path(name)).expect("screenshot");
    }
    b.click("#oidc-login").expect("start OIDC login");
    if let Err(e) = b.wait_for_selector("input[name=login]", WAIT) {
        let (url, text) = (
            b.url().unwrap_or_default(),
            b.text(None).unwrap_or_default(),
        );
        panic!("no IdP login form ({e}) at {url}: {text}");
    }
    b.fill("input[name=login]", user).expect("login");
    b.fill("input[name=password]", "any").expect("password");
    b.click("button[type=submit]").expect("submit login");
    // Consent (first login of this user in this context).
    let deadline = Instant::now() + WAIT;
    loop {
        let url = b.url().expect("url");
        if url.contains("/console/me") {
            break;
        }
        if !url.contains("/console/") {
            let _ = b.click("button[type=submit]");
        }
        assert!(Instant::now() < deadline, "login of {user} stuck at {url}");
        std::thread::sleep(Duration::from_millis(200));
    }
    b.wait_for_text(user, WAIT).expect("logged in");
}

fn body(b: &mut Browser) -> String {
    b.text(None).expect("page text")
}

#[test]
fn console_end_to_end_in_chromium() {
    if let Err(why) = chromium_path() {
        eprintln!("skipping: {why}");
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let op = OidcProvider::builder()
        .client(
            OidcClient::public("console").redirect_uri(&format!("http://{addr}/console/callback")),
        )
        .start()
        .expect("oidc-provider");
    let gw = ConsoleGw::start(
        listener,
        Options {
            oidc_issuer: Some(op.issuer().to_owned()),
            database_url: None,
        },
    );
    let aud = &console_support::resource(addr);
    let alice_token = gw
        .block_on(op.mint("alice", aud, None))
        .expect("alice token");
    let bob_token = gw.block_on(op.mint("bob", aud, None)).expect("bob token");

    // MCP traffic before anyone looks: alice echoes (allowed) and tries `fail` (denied by
    // Policy); bob adds; a hostile client calls a tool named like markup.
    let mut alice = Mcp::new(&gw, alice_token.clone());
    let mut bob = Mcp::new(&gw, bob_token);
    gw.block_on(async {
        alice.open("alice-client").await;
        let (s, list) = alice.send("tools/list", json!({}), false).await;
        assert_eq!(s, 200, "{list}");
        let (s, r) = alice
            .call("tools_echo", json!({"text": "hello from alice"}))
            .await;
        assert_eq!(s, 200, "{r}");
        assert!(r.to_string().contains("hello from alice"), "{r}");
        alice.call("tools_fail", json!({})).await;
        bob.open("bob-client").await;
        bob.send("tools/list", json!({}), false).await;
        let (s, r) = bob.call("tools_add", json!({"a": 2, "b": 3})).await;
        assert_eq!(s, 200, "{r}");
        alice
            .call(
                "tools_<img src=x onerror=window.__xss=1>",
                json!({"<script>": "x"}),
            )
            .await;
    });
    let alice_sid = alice.session.clone().expect("alice session");

    let mut b = Browser::launch().expect("chromium");

    // --- alice ---
    oidc_login(&mut b, &gw, "alice", Some("login"));
    let me = body(&mut b);
    assert!(
        me.contains("tools_echo") && me.contains("alice-echo"),
        "{me}"
    );
    assert!(!me.contains("tools_add"), "bob's tool is not alice's: {me}");
    let cookies = b.cookies().expect("cookies");
    let sid = cookies
        .iter()
        .find(|c| c["name"] == "reflow_console")
        .expect("session cookie");
    assert_eq!(sid["httpOnly"], true);
    assert_eq!(sid["sameSite"], "Strict");
    assert!(
        !b.url().expect("url").contains("code="),
        "no code or token in the URL"
    );
    b.screenshot(&screenshot_path("me")).expect("screenshot");

    let nav = b
        .goto(&gw.url("/console/activity?user=bob"))
        .expect("activity");
    assert_eq!(nav.status, Some(200));
    assert_eq!(nav.header("x-frame-options"), Some("DENY"));
    assert!(
        nav.header("content-security-policy").is_some_and(
            |c| c.contains("frame-ancestors 'none'") && c.contains("script-src 'self'")
        ),
        "{:?}",
        nav.headers
    );
    let activity = body(&mut b);
    assert!(
        activity.contains("echo") && activity.contains("alice-no-fail"),
        "{activity}"
    );
    assert!(
        !activity.contains("bob-add") && !activity.lines().any(|l| l.contains("\tadd\t")),
        "`?user=bob` does not show bob's rows: {activity}"
    );
    assert!(
        activity.contains("<img src=x onerror=window.__xss=1>"),
        "markup shown as text"
    );
    assert_eq!(
        b.eval("window.__xss === undefined").expect("eval"),
        true,
        "no XSS"
    );
    b.screenshot(&screenshot_path("activity"))
        .expect("screenshot");

    let filtered = b
        .goto(&gw.url("/console/activity?decision=deny"))
        .expect("filter");
    assert_eq!(filtered.status, Some(200));
    let denied = body(&mut b);
    assert!(
        denied.contains("alice-no-fail") && !denied.contains("alice-echo"),
        "{denied}"
    );

    // One of her events, by its link.
    b.goto(&gw.url("/console/activity")).expect("activity");
    let event_path = b
        .eval("document.querySelector('table.activity td.name a').getAttribute('href')")
        .expect("event link");
    let event_path = event_path.as_str().expect("href").to_owned();
    let ev = b.goto(&gw.url(&event_path)).expect("event");
    assert_eq!(ev.status, Some(200));
    b.screenshot(&screenshot_path("event")).expect("screenshot");

    b.goto(&gw.url("/console/sessions")).expect("sessions");
    assert!(
        body(&mut b).contains("alice-client"),
        "her session is listed"
    );
    b.screenshot(&screenshot_path("sessions"))
        .expect("screenshot");

    // --- bob: alice's URLs are 404, and so is ending her session ---
    oidc_login(&mut b, &gw, "bob", None);
    for path in [event_path.clone(), format!("/console/sessions/{alice_sid}")] {
        let nav = b.goto(&gw.url(&path)).expect("goto");
        assert_eq!(nav.status, Some(404), "bob at {path}");
    }
    b.goto(&gw.url("/console/sessions"))
        .expect("bob's sessions");
    let csrf = b
        .eval("document.querySelector('input[name=csrf]').value")
        .expect("csrf");
    let csrf = csrf.as_str().expect("csrf text");
    let status = b
        .eval(&format!(
            "fetch('/console/sessions/{alice_sid}/end', {{method: 'POST', headers: {{'content-type': \
             'application/x-www-form-urlencoded'}}, body: 'csrf={csrf}'}}).then(r => r.status)"
        ))
        .expect("post");
    assert_eq!(status, 404, "bob cannot end alice's session");
    let admin_page = b.goto(&gw.url("/console/admin")).expect("admin");
    assert_eq!(admin_page.status, Some(404), "bob is no admin");
    let (still, _) = gw.block_on(alice.send("ping", json!({}), false));
    assert_eq!(still, 200, "alice's session survived bob");

    // --- admin: the live view shows a call made now within 2 s ---
    oidc_login(&mut b, &gw, "admin", None);
    b.goto(&gw.url("/console/admin")).expect("admin page");
    b.wait_for_text("live", WAIT).expect("stream connected");
    let admin_text = body(&mut b);
    assert!(
        admin_text.contains("e2e/tools") && admin_text.contains("dataplane-e2e"),
        "{admin_text}"
    );
    assert!(
        admin_text.contains("alice-no-fail"),
        "denials with their Policy: {admin_text}"
    );
    let mut bob2 = Mcp::new(&gw, gw.block_on(op.mint("bob", aud, None)).expect("token"));
    let called = gw.block_on(async {
        bob2.open("bob-live").await;
        let (s, r) = bob2.call("tools_add", json!({"a": 40, "b": 2})).await;
        assert_eq!(s, 200, "{r}");
        Instant::now()
    });
    b.wait_for_selector("#live tr.fresh", Duration::from_secs(2))
        .expect("the call appears in the live view within 2 s");
    let seen_after = called.elapsed();
    let live_text = b.text(Some("#live")).expect("live text");
    assert!(
        live_text.contains("bob") && live_text.contains("add"),
        "{live_text}"
    );
    assert_eq!(b.eval("window.__xss === undefined").expect("eval"), true);
    eprintln!("live view showed the call {seen_after:?} after it returned");
    b.screenshot(&screenshot_path("admin")).expect("screenshot");

    // --- alice ends her own session: her client's next request is 404 ---
    oidc_login(&mut b, &gw, "alice", None);
    b.goto(&gw.url(&format!("/console/sessions/{alice_sid}")))
        .expect("her session");
    b.click("button.end").expect("end it");
    if let Err(e) = b.wait_for_text("No live sessions", WAIT) {
        let (url, text) = (
            b.url().unwrap_or_default(),
            b.text(None).unwrap_or_default(),
        );
        panic!("session still listed ({e}) at {url}: {text}");
    }
    let (after, _) = gw.block_on(alice.send("ping", json!({}), false));
    assert_eq!(after, 404, "the ended session is gone for the client");
}
