//! The console's OIDC login against a real oidc-provider, without a browser (the IdP's login and
//! consent forms are filled over HTTP): the ID token is verified (signature through JWKS, issuer,
//! audience = the console's client id, nonce bound to the login), and the bad cases are refused:
//! a nonce changed in the authorization request, a replayed callback (state used once), a
//! callback in another browser, and tokens of this IdP whose audience or nonce is not the login's.

use reflow_dataplane::console::{OidcClient as ConsoleOidc, OidcConfig};
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider};

mod console_support;
use console_support::{ConsoleGw, Options, Web};

struct Setup {
    op: OidcProvider,
    gw: ConsoleGw,
}

fn setup() -> Setup {
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
    Setup { op, gw }
}

/// Starts an OIDC login in `web`; the authorization URL the console sent the browser to.
async fn start(web: &mut Web) -> String {
    let (status, h, _) = web.get("/console/login/oidc").await;
    assert_eq!(status, 303);
    assert!(
        web.cookie("reflow_console_oidc").is_some(),
        "sealed login in flight"
    );
    h["location"].to_str().expect("location").to_owned()
}

/// The path and query of the callback URL the IdP redirected to.
fn path_of(callback: &str) -> String {
    let at = callback.find("/console/callback").expect("callback path");
    callback[at..].to_owned()
}

fn param(url: &str, name: &str) -> String {
    let at = url.find(&format!("{name}=")).expect("param") + name.len() + 1;
    url[at..].split('&').next().expect("value").to_owned()
}

#[test]
fn the_id_token_is_verified_and_bad_logins_are_refused() {
    let Setup { op, gw } = setup();
    let callback_prefix = gw.url("/console/callback");
    gw.block_on(async {
        // A good login: the ID token verifies, alice is in.
        let mut alice = Web::new(&gw);
        let authorize = start(&mut alice).await;
        let cb = op
            .login_with_forms(&authorize, "alice", &callback_prefix)
            .await
            .expect("IdP login");
        let sealed = alice
            .cookie("reflow_console_oidc")
            .expect("cookie")
            .to_owned();
        let (status, _, page) = alice.get(&path_of(&cb)).await;
        assert_eq!(status, 200, "{page}");
        let (status, _, page) = alice.get("/console/me").await;
        assert_eq!(status, 200);
        assert!(page.contains("alice"));

        // The same callback replayed (with the login-in-flight cookie put back): refused
        // before the code is even tried.
        let mut replay = Web::new(&gw);
        replay
            .cookies
            .push(("reflow_console_oidc".into(), sealed.clone()));
        let (status, _, page) = replay.get(&path_of(&cb)).await;
        assert_eq!(status, 400);
        assert!(page.contains("already used"), "{page}");
        assert!(replay.cookie("reflow_console").is_none());

        // The callback carried to another browser (login CSRF): no login in flight there.
        let mut victim = Web::new(&gw);
        let authorize = start(&mut victim).await;
        let cb = op
            .login_with_forms(&authorize, "bob", &callback_prefix)
            .await
            .expect("IdP login");
        let mut other = Web::new(&gw);
        let (status, _, _) = other.get(&path_of(&cb)).await;
        assert_eq!(status, 400);
        assert!(other.cookie("reflow_console").is_none());

        // A nonce changed on the way to the IdP: the code exchanges (state and PKCE are the
        // login's), but the ID token's nonce is not the one bound to this login.
        let mut mallory = Web::new(&gw);
        let authorize = start(&mut mallory).await;
        let nonce = param(&authorize, "nonce");
        let tampered = authorize.replace(&format!("nonce={nonce}"), "nonce=chosen-by-mallory");
        assert_ne!(tampered, authorize);
        let cb = op
            .login_with_forms(&tampered, "alice", &callback_prefix)
            .await
            .expect("IdP login");
        let (status, _, page) = mallory.get(&path_of(&cb)).await;
        assert_eq!(status, 400, "{page}");
        assert!(page.contains("nonce does not match"), "{page}");
        assert!(mallory.cookie("reflow_console").is_none());

        // Tokens signed by this IdP but not ID tokens of this login: an access token for the
        // gateway (wrong audience) and a token for the console client without the nonce.
        let verifier = ConsoleOidc::new(&OidcConfig {
            issuer: op.issuer().to_owned(),
            client_id: "console".to_owned(),
            client_secret_file: None,
            redirect_url: callback_prefix.clone(),
            scopes: Vec::new(),
            resource: None,
        })
        .expect("verifier");
        let access = op
            .mint("alice", &console_support::resource(gw.addr), None)
            .await
            .expect("access token");
        let err = verifier
            .verify_id_token(&access, "n")
            .await
            .expect_err("wrong audience");
        assert!(err.to_string().contains("wrong_audience"), "{err}");
        let for_console = op.mint("alice", "console", None).await.expect("token");
        let err = verifier
            .verify_id_token(&for_console, "n")
            .await
            .expect_err("no nonce");
        assert!(err.to_string().contains("nonce"), "{err}");
        let mut forged = for_console.clone();
        forged.push('x');
        let err = verifier
            .verify_id_token(&forged, "n")
            .await
            .expect_err("bad signature");
        assert!(err.to_string().contains("refused"), "{err}");
    });
}
