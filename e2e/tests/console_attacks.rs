//! The console under attack, over plain HTTP: CSRF (missing, wrong, another login's token,
//! cross-site Origin / Sec-Fetch-Site), session fixation, open redirects on login, login CSRF,
//! markup in user names, another user's session id in the end button, non-admins on admin
//! URLs, and the console staying off unless enabled.

use serde_json::json;

mod console_support;
use console_support::{ConsoleGw, Mcp, Options, Web, token};
use reflow_e2e::harness::console_web::csrf_in;

fn gw() -> ConsoleGw {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    ConsoleGw::start(
        listener,
        Options {
            oidc_issuer: None,
            database_url: None,
        },
    )
}

#[test]
fn the_console_is_off_unless_enabled() {
    let gw = reflow_e2e::harness::TestGateway::builder()
        .start()
        .expect("gateway");
    let status = gw.block_on(async {
        reqwest::get(format!("{}/console/login", gw.base_url()))
            .await
            .expect("answer")
            .status()
            .as_u16()
    });
    assert_eq!(status, 404);
}

#[test]
fn pages_need_a_login_and_carry_the_security_headers() {
    let gw = gw();
    gw.block_on(async {
        let mut web = Web::new(&gw);
        for path in [
            "/console/me",
            "/console/activity",
            "/console/sessions",
            "/console/admin",
        ] {
            let (status, headers, _) = web.get(path).await;
            assert_eq!(status, 303, "{path}");
            assert_eq!(headers["location"], "/console/login");
        }
        assert_eq!(web.get("/console/admin/live").await.0, 401);
        let (status, h, page) = web.get("/console/login").await;
        assert_eq!(status, 200);
        for (name, want) in [
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
            ("cross-origin-opener-policy", "same-origin"),
        ] {
            assert_eq!(h[name], want, "{name}");
        }
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert!(!page.contains("<script>") && page.contains("/console/assets/console.js"));
        let cookie = h["set-cookie"].to_str().expect("cookie");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        // Embedded assets, nothing from elsewhere.
        let (status, h, js) = web.get("/console/assets/console.js").await;
        assert_eq!(status, 200);
        assert!(
            h["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/javascript")
        );
        assert!(js.contains("textContent") && !js.contains("innerHTML"));
        assert_eq!(web.get("/console/assets/../../etc/passwd").await.0, 404);
        assert_eq!(web.get("/console/nope").await.0, 404);
    });
}

#[test]
fn login_refuses_bad_tokens_login_csrf_fixation_and_redirects_nowhere_else() {
    let gw = gw();
    gw.block_on(async {
        // A bad token: 400, and the token is not echoed.
        let mut web = Web::new(&gw);
        let bogus = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2VjcmV0LXNpZ25hdHVyZQ";
        assert_eq!(web.token_login(bogus).await, 400);
        let (_, _, page) = web.get("/console/login").await;
        assert!(!page.contains(bogus));
        // Login CSRF: a form posted without the browser's login cookie (another site's form).
        let mut stranger = Web::new(&gw);
        let form = format!("token={}&csrf=guess", token("mallory", &[]));
        assert_eq!(
            stranger.post("/console/login/token", &form, &[]).await.0,
            403
        );
        // The right form from another origin.
        let mut web = Web::new(&gw);
        let (_, _, page) = web.get("/console/login").await;
        let csrf = csrf_in(&page).expect("csrf");
        let form = format!("token={}&csrf={csrf}", token("alice", &[]));
        let evil = [("origin", "https://evil.example")];
        assert_eq!(web.post("/console/login/token", &form, &evil).await.0, 403);

        // Session fixation: a cookie value chosen by an attacker is never adopted.
        let mut victim = Web::new(&gw);
        victim
            .cookies
            .push(("reflow_console".into(), "attacker-chosen".into()));
        let (_, _, page) = victim
            .get("/console/login?next=https://evil.example/")
            .await;
        let csrf = csrf_in(&page).expect("csrf");
        let form = format!("token={}&csrf={csrf}", token("alice", &[]));
        let (status, h, _) = victim.post("/console/login/token", &form, &[]).await;
        assert_eq!(status, 303);
        assert_eq!(
            h["location"], "/console/me",
            "no open redirect: `next` is ignored"
        );
        let issued = victim.cookie("reflow_console").expect("cookie").to_owned();
        assert_ne!(issued, "attacker-chosen");
        assert!(issued.len() >= 43, "256 random bits");
        let set = h
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("reflow_console="))
            .expect("set-cookie")
            .to_owned();
        assert!(
            set.contains("HttpOnly")
                && set.contains("SameSite=Strict")
                && set.contains("Path=/console")
        );
        let mut attacker = Web::new(&gw);
        attacker
            .cookies
            .push(("reflow_console".into(), "attacker-chosen".into()));
        assert_eq!(
            attacker.get("/console/me").await.0,
            303,
            "the chosen id is nobody"
        );
        assert_eq!(victim.get("/console/me").await.0, 200);

        // OIDC is not configured here: its endpoints do not exist.
        assert_eq!(victim.get("/console/login/oidc").await.0, 404);
        assert_eq!(victim.get("/console/callback?code=x&state=y").await.0, 404);
    });
}

#[test]
fn state_changes_need_the_logins_csrf_token_and_the_same_origin() {
    let gw = gw();
    gw.block_on(async {
        let mut mcp = Mcp::new(&gw, token("alice", &[]));
        mcp.open("victim-client").await;
        let sid = mcp.session.clone().expect("sid");
        let mut alice = Web::new(&gw);
        assert_eq!(alice.token_login(&token("alice", &[])).await, 303);
        let mut bob = Web::new(&gw);
        assert_eq!(bob.token_login(&token("bob", &[])).await, 303);
        let csrf = alice.csrf("/console/sessions").await;
        let bob_csrf = bob.csrf("/console/sessions").await;
        assert_ne!(csrf, bob_csrf);
        let end = format!("/console/sessions/{sid}/end");
        for (form, headers, why) in [
            (String::new(), vec![], "no token"),
            ("csrf=wrong".to_owned(), vec![], "a wrong token"),
            (format!("csrf={bob_csrf}"), vec![], "another login's token"),
            (
                format!("csrf={csrf}"),
                vec![("origin", "https://evil.example")],
                "cross-site Origin",
            ),
            (
                format!("csrf={csrf}"),
                vec![("origin", "null")],
                "opaque Origin",
            ),
            (
                format!("csrf={csrf}"),
                vec![("sec-fetch-site", "cross-site")],
                "Sec-Fetch-Site",
            ),
        ] {
            let (status, _, _) = alice.post(&end, &form, &headers).await;
            assert_eq!(status, 403, "{why}");
            let (still, _) = mcp.send("ping", json!({}), false).await;
            assert_eq!(still, 200, "the session survives a refused end ({why})");
        }
        // Bob, with his own valid token, on alice's session id: 404, and it lives on.
        let (status, _, _) = bob.post(&end, &format!("csrf={bob_csrf}"), &[]).await;
        assert_eq!(status, 404);
        assert_eq!(bob.get(&format!("/console/sessions/{sid}")).await.0, 404);
        assert_eq!(mcp.send("ping", json!({}), false).await.0, 200);
        // Alice, properly: ended, and the client's next request is 404.
        let (status, h, _) = alice.post(&end, &format!("csrf={csrf}"), &[]).await;
        assert_eq!(status, 303);
        assert_eq!(h["location"], "/console/sessions");
        assert_eq!(mcp.send("ping", json!({}), false).await.0, 404);
        // Logout needs the token too; after it the cookie is worthless.
        assert_eq!(
            alice.post("/console/logout", "csrf=wrong", &[]).await.0,
            403
        );
        let old = alice.cookie("reflow_console").expect("cookie").to_owned();
        assert_eq!(
            alice
                .post("/console/logout", &format!("csrf={csrf}"), &[])
                .await
                .0,
            303
        );
        let mut replay = Web::new(&gw);
        replay.cookies.push(("reflow_console".into(), old));
        assert_eq!(replay.get("/console/me").await.0, 303);
    });
}

#[test]
fn admin_views_are_404_for_users_and_markup_in_names_stays_text() {
    let gw = gw();
    gw.block_on(async {
        let mut user = Web::new(&gw);
        let hostile = "<script>window.x=1</script>";
        assert_eq!(user.token_login(&token(hostile, &[])).await, 303);
        let (status, _, page) = user.get("/console/me").await;
        assert_eq!(status, 200);
        assert!(
            !page.contains(hostile) && page.contains("&lt;script&gt;window.x=1&lt;/script&gt;")
        );
        assert_eq!(user.get("/console/admin").await.0, 404);
        assert_eq!(user.get("/console/admin/live").await.0, 404);
        let mut admin = Web::new(&gw);
        assert_eq!(
            admin
                .token_login(&token("root", &[console_support::ADMIN_GROUP]))
                .await,
            303
        );
        let (status, _, page) = admin.get("/console/admin").await;
        assert_eq!(status, 200);
        assert!(page.contains("e2e/tools") && page.contains("Live activity"));
    });
}
