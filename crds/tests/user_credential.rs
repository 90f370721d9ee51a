//! `spec.userCredential` and user-managed Credentials through the compiler: the slot, the
//! precedence (admin user > user-brought > group > role > default), the slot shadowing of shared
//! Credentials, what a user-managed Credential may and may not inject, and the refusals.

mod common;

use common::*;
use reflow_crds::compile::{ACCEPTED, CONFLICTED, ObjectKind, RESOLVED_REFS};
use reflow_crds::snapshot::InjectAs;
use reflow_crds::snapshot::UserCredentialMode;
use secrecy::ExposeSecret;

const NS: &str = "team";

fn gh_target(user_credential: &str) -> String {
    target_doc(
        NS,
        "gh",
        "",
        &format!(
            "{{transport: streamableHttp, url: 'http://gh.example/mcp', userCredential: {user_credential}}}"
        ),
    )
}

fn stdio_target(user_credential: &str) -> String {
    target_doc(
        NS,
        "cli",
        "",
        &format!("{{transport: stdio, command: /bin/true, userCredential: {user_credential}}}"),
    )
}

/// A user-managed Credential (what the controller writes for a user's grant).
fn user_managed(name: &str, user: &str, header: &str, secret_key: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {name}, namespace: {NS}, labels: {{mcp.reflow.io/user-managed: 'true'}}}}\nspec: {{targetRef: {{name: gh}}, subject: {{user: {user}}}, headers: [{{name: {header}, secretKeyRef: {{name: grants, key: {secret_key}}}}}]}}\n---\n"
    )
}

fn admin(name: &str, subject: &str, header: &str, secret_key: &str) -> String {
    credential_doc(
        NS,
        name,
        &format!(
            "{{targetRef: {{name: gh}}, subject: {{{subject}}}, headers: [{{name: {header}, secretKeyRef: {{name: shared, key: {secret_key}}}}}]}}"
        ),
    )
}

const SECRET_MODE: &str = "{mode: secret, inject: {header: Authorization, prefix: 'token '}, displayName: GitHub, secret: {hint: 'a fine-grained PAT'}}";

#[test]
fn secret_mode_compiles_to_a_header_slot() {
    let c = compile(&gh_target(SECRET_MODE));
    assert!(cond(&c, ObjectKind::Target, NS, "gh", ACCEPTED).status);
    let u = target(&c, NS, "gh")
        .user_credential
        .as_ref()
        .expect("compiled userCredential");
    assert_eq!(u.mode, UserCredentialMode::Secret);
    assert_eq!((u.inject_as, &*u.name), (InjectAs::Header, "authorization"));
    assert_eq!(&*u.prefix, "token ");
    assert_eq!(&*u.display_name, "GitHub");
    assert_eq!(u.hint.as_deref(), Some("a fine-grained PAT"));
}

#[test]
fn precedence_admin_user_then_user_brought_then_shared_never_fills_the_slot() {
    let k = key();
    let yaml = gh_target(SECRET_MODE)
        + &secret_doc(
            NS,
            "grants",
            &[("alice", "token alice-own"), ("bob", "token bob-own")],
        )
        + &secret_doc(
            NS,
            "shared",
            &[
                ("pinned", "token admin-pinned"),
                ("team", "token team"),
                ("x", "x-team"),
            ],
        )
        + &user_managed("alice-gh", "alice", "Authorization", "alice")
        + &user_managed("bob-gh", "bob", "Authorization", "bob")
        + &admin("pin-bob", "user: bob", "Authorization", "pinned")
        + &admin("team-token", "group: dev", "authorization", "team")
        + &credential_doc(
            NS,
            "team-extra",
            "{targetRef: {name: gh}, subject: {group: dev}, headers: [{name: x-team, secretKeyRef: {name: shared, key: x}}]}",
        );
    let c = compile_with(&inputs(&yaml), &k);
    let alice = injected(&c, &k, NS, "gh", &id("alice", &["dev"], &[]));
    assert_eq!(alice["header:authorization"], "token alice-own");
    assert_eq!(
        alice["header:x-team"], "x-team",
        "other keys still come from groups"
    );
    // An admin's explicit user Credential outranks what the user brought.
    let bob = injected(&c, &k, NS, "gh", &id("bob", &["dev"], &[]));
    assert_eq!(bob["header:authorization"], "token admin-pinned");
    // Carol has not connected: the group's token must not stand in for her own.
    let carol = injected(&c, &k, NS, "gh", &id("carol", &["dev"], &[]));
    assert!(!carol.contains_key("header:authorization"), "{carol:?}");
    assert_eq!(carol["header:x-team"], "x-team");
    let shadowed = cond(&c, ObjectKind::Credential, NS, "team-token", CONFLICTED);
    assert!(shadowed.status);
    assert_eq!(shadowed.reason, "ShadowedByUserCredential");
    assert!(!cond(&c, ObjectKind::Credential, NS, "team-extra", CONFLICTED).status);
    assert!(cond(&c, ObjectKind::Credential, NS, "alice-gh", RESOLVED_REFS).status);
}

#[test]
fn a_user_brought_value_does_not_open_in_an_admin_slot() {
    let k = key();
    let yaml = gh_target(SECRET_MODE)
        + &secret_doc(NS, "grants", &[("alice", "token alice-own")])
        + &user_managed("alice-gh", "alice", "Authorization", "alice");
    let c = compile_with(&inputs(&yaml), &k);
    let resolved = target(&c, NS, "gh")
        .credentials
        .resolve(&id("alice", &[], &[]));
    let e = &resolved.entries[0].entry;
    assert!(e.aad.contains("/user-brought:alice/"), "{}", e.aad);
    let admin_aad = e.aad.replace("user-brought:alice", "user:alice");
    assert!(k.open(&admin_aad, &e.value).is_err());
    assert_eq!(
        k.open(&e.aad, &e.value).unwrap().expose_secret(),
        "token alice-own"
    );
}

#[test]
fn user_managed_credentials_fill_only_the_slot_of_a_target_that_declares_one() {
    let yaml = gh_target(SECRET_MODE)
        + &secret_doc(NS, "grants", &[("alice", "v")])
        + &user_managed("sneaky", "alice", "X-Other", "alice");
    let c = compile(&yaml);
    let r = cond(&c, ObjectKind::Credential, NS, "sneaky", RESOLVED_REFS);
    assert_eq!((r.status, r.reason.as_str()), (false, "NotTheUserSlot"));
    assert!(target(&c, NS, "gh").credentials.is_empty());

    let plain = http_target(NS, "gh")
        + &secret_doc(NS, "grants", &[("alice", "v")])
        + &user_managed("alice-gh", "alice", "Authorization", "alice");
    let c = compile(&plain);
    let r = cond(&c, ObjectKind::Credential, NS, "alice-gh", RESOLVED_REFS);
    assert_eq!((r.status, r.reason.as_str()), (false, "NoUserCredential"));

    let group = format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: g, namespace: {NS}, labels: {{mcp.reflow.io/user-managed: 'true'}}}}\nspec: {{targetRef: {{name: gh}}, subject: {{group: dev}}, headers: [{{name: Authorization, secretKeyRef: {{name: grants, key: alice}}}}]}}\n---\n"
    );
    let c =
        compile(&(gh_target(SECRET_MODE) + &secret_doc(NS, "grants", &[("alice", "v")]) + &group));
    let r = cond(&c, ObjectKind::Credential, NS, "g", ACCEPTED);
    assert!(
        !r.status && r.message.contains("subject must be a user"),
        "{r:?}"
    );
}

#[test]
fn oauth2_and_token_exchange_compile_with_sealed_client_secrets() {
    let k = key();
    let yaml = gh_target(
        "{mode: oauth2, inject: {header: Authorization}, oauth2: {scopes: [repo, 'read:org'], client: {clientId: reflow, clientSecretRef: {name: oauth, key: secret}}}}",
    ) + &stdio_target(
        "{mode: tokenExchange, inject: {env: API_TOKEN}, tokenExchange: {tokenEndpoint: 'https://idp.example/token', audience: 'https://api.example', client: {clientId: gw, clientSecretRef: {name: oauth, key: secret}}}}",
    ) + &secret_doc(NS, "oauth", &[("secret", "client-secret-value")]);
    let c = compile_with(&inputs(&yaml), &k);
    let gh = target(&c, NS, "gh").user_credential.as_ref().expect("gh");
    let o = gh.oauth2.as_ref().expect("oauth2");
    assert_eq!(
        &*gh.prefix, "Bearer ",
        "oauth2 on a header defaults to Bearer"
    );
    assert_eq!(
        &*o.resource, "http://gh.example/mcp",
        "resource defaults to the url"
    );
    assert!(o.authorization_server.is_none(), "discovered at run time");
    let secret = o
        .client
        .as_ref()
        .and_then(|c| c.client_secret.as_ref())
        .expect("sealed");
    assert_eq!(
        k.open(&secret.aad, &secret.value).unwrap().expose_secret(),
        "client-secret-value"
    );
    let snapshot_json = serde_json::to_string(&c.snapshot).expect("serializes");
    assert!(!snapshot_json.contains("client-secret-value"));
    let cli = target(&c, NS, "cli").user_credential.as_ref().expect("cli");
    assert_eq!(
        (cli.inject_as, &*cli.name, &*cli.prefix),
        (InjectAs::Env, "API_TOKEN", "")
    );
    assert_eq!(
        &*cli.token_exchange.as_ref().expect("tx").audience,
        "https://api.example"
    );
}

#[test]
fn bad_user_credentials_refuse_the_target_with_a_reason() {
    let cases = [
        (
            gh_target("{mode: secret, inject: {env: TOKEN}}"),
            "inject.env is for the stdio",
        ),
        (
            stdio_target("{mode: secret, inject: {header: Authorization}}"),
            "inject.header is for HTTP",
        ),
        (
            gh_target("{mode: secret, inject: {header: Host}}"),
            "hop-by-hop",
        ),
        (
            gh_target("{mode: oauth2, inject: {header: Authorization}}"),
            "needs its own block",
        ),
        (
            gh_target("{mode: secret, inject: {header: A}, oauth2: {}}"),
            "needs its own block",
        ),
        (
            stdio_target(
                "{mode: oauth2, inject: {env: T}, oauth2: {resource: 'https://r.example'}}",
            ),
            "authorizationServer is required",
        ),
        (
            gh_target("{mode: oauth2, inject: {header: A}, oauth2: {scopes: ['a b']}}"),
            "not a valid OAuth scope",
        ),
        (
            gh_target("{mode: secret, inject: {header: A, prefix: \"x\\r\\n\"}}"),
            "CR, LF or NUL",
        ),
        (
            gh_target(
                "{mode: tokenExchange, inject: {header: A}, tokenExchange: {tokenEndpoint: 'ftp://x', audience: a, client: {clientId: c}}}",
            ),
            "must be an http(s) URL",
        ),
    ];
    for (yaml, want) in cases {
        let c = compile(&yaml);
        let name = if yaml.contains("name: cli") {
            "cli"
        } else {
            "gh"
        };
        let a = cond(&c, ObjectKind::Target, NS, name, ACCEPTED);
        assert!(!a.status, "accepted: {yaml}");
        assert_eq!(a.reason, "InvalidUserCredential");
        assert!(a.message.contains(want), "{:?} lacks {want:?}", a.message);
        assert!(c.snapshot.target(NS, name).is_none());
    }
    // A client secret that does not resolve refuses the Target too (never half-configured).
    let c = compile(&gh_target(
        "{mode: oauth2, inject: {header: A}, oauth2: {client: {clientId: c, clientSecretRef: {name: nope, key: k}}}}",
    ));
    let a = cond(&c, ObjectKind::Target, NS, "gh", ACCEPTED);
    assert_eq!((a.status, a.reason.as_str()), (false, "SecretNotFound"));
}

fn target_obj(yaml: &str) -> reflow_crds::api::Target {
    let doc = yaml.trim_end_matches("---\n");
    serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"))
}

fn cel_messages(t: &reflow_crds::api::Target) -> Vec<String> {
    match kube::core::cel::validate_cel(t) {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn the_crd_cel_rules_refuse_the_same_shapes_at_admission() {
    assert!(cel_messages(&target_obj(&gh_target(SECRET_MODE))).is_empty());
    let ok_tx = stdio_target(
        "{mode: tokenExchange, inject: {env: T}, tokenExchange: {tokenEndpoint: 'https://i/t', audience: a, client: {clientId: c}}}",
    );
    assert!(cel_messages(&target_obj(&ok_tx)).is_empty());
    let cases = [
        (
            gh_target("{mode: secret, inject: {env: TOKEN}}"),
            "userCredential.inject.env is for the stdio",
        ),
        (
            stdio_target("{mode: secret, inject: {header: A}}"),
            "userCredential.inject.header is for HTTP",
        ),
        (
            gh_target("{mode: oauth2, inject: {header: A}}"),
            "mode: oauth2 needs the oauth2 block",
        ),
        (
            gh_target("{mode: secret, inject: {header: A}, oauth2: {}}"),
            "oauth2 is only valid with mode: oauth2",
        ),
        (
            gh_target("{mode: secret, inject: {header: A, env: B}}"),
            "inject names exactly one of header or env",
        ),
        (
            gh_target("{mode: secret, inject: {header: Host}}"),
            "header must be an HTTP token and not a hop-by-hop or MCP protocol header",
        ),
    ];
    for (yaml, want) in cases {
        let got = cel_messages(&target_obj(&yaml));
        assert!(got.iter().any(|m| m.starts_with(want)), "{yaml}: {got:?}");
    }
}

/// The README's `userCredential` example compiles as shown: every Target accepted.
#[test]
fn the_readme_example_compiles() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("README");
    let section = readme
        .split("## Bring your own credentials (`userCredential`)")
        .nth(1)
        .expect("README section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("yaml block");
    let c = compile(yaml);
    for name in ["github", "linear", "jira"] {
        let a = cond(&c, ObjectKind::Target, "team", name, ACCEPTED);
        assert!(a.status, "{name}: {a:?}");
        assert!(
            c.snapshot
                .target("team", name)
                .and_then(|t| t.user_credential.as_ref())
                .is_some()
        );
    }
}
