//! Policy `when:` conditions (issue #22 part 1) and rate-limit specs (part 2), from inline
//! manifests through `compile`: the issue's three examples, priority and deny-wins with
//! conditions, every fail-closed case, hostile inputs, and rejection at compile time.

mod common;

use std::time::Instant;

use common::*;
use reflow_crds::compile::{ACCEPTED, ObjectKind};
use reflow_crds::snapshot::condition::{Condition, Outcome, Request, clean_path};
use reflow_crds::snapshot::{Decision, ItemKind};
use reflow_crds::{Claims, Compiled, Identity};
use serde_json::{Value, json};

const NS: &str = "team";

/// One Target `t` and the given policies (name, spec).
fn setup(policies: &[(&str, &str)]) -> Compiled {
    let mut yaml = http_target(NS, "t");
    for (name, spec) in policies {
        yaml.push_str(&policy_doc(NS, name, spec));
    }
    compile(&yaml)
}

fn call(c: &Compiled, who: &Identity, tool: &str, args: &Value) -> Decision {
    let req = Request {
        kind: ItemKind::Tool,
        name: tool,
        target: "t",
        args: Some(args),
        now: 1_800_000_000,
    };
    target(c, NS, "t").policy.decide_request(who, &req)
}

fn listed(c: &Compiled, who: &Identity, tool: &str) -> bool {
    let view = target(c, NS, "t").policy.view(who);
    view.visible(ItemKind::Tool, [tool]).count() == 1
}

fn with_claims(mut who: Identity, claims: Value) -> Identity {
    let Value::Object(m) = claims else {
        panic!("claims must be an object")
    };
    who.claims = Claims::new(m);
    who
}

const REPO_RULE: &str = "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: [github_create_issue], when: 'args.repo.startsWith(\"acme/\")'}]}";

#[test]
fn example_1_allow_only_for_acme_repos() {
    let c = setup(&[("acme-repos", REPO_RULE)]);
    assert!(cond(&c, ObjectKind::Policy, NS, "acme-repos", ACCEPTED).status);
    let bob = id("bob", &[], &[]);
    let d = call(
        &c,
        &bob,
        "github_create_issue",
        &json!({"repo": "acme/web"}),
    );
    assert!(d.allowed);
    assert_eq!(d.policy.as_deref(), Some("acme-repos"));
    assert_eq!(d.condition, Some(("acme-repos".into(), Outcome::True)));

    // Another org: the only allow does not apply -> default deny, with the reason kept.
    let d = call(
        &c,
        &bob,
        "github_create_issue",
        &json!({"repo": "evil/web"}),
    );
    assert!(!d.allowed);
    assert_eq!(d.policy, None);
    assert_eq!(d.condition, Some(("acme-repos".into(), Outcome::False)));

    // Missing field, wrong type, no args at all: a runtime error, so the Allow does not apply.
    for args in [
        json!({}),
        json!({"repo": 42}),
        json!({"repo": null}),
        json!([1, 2]),
    ] {
        let d = call(&c, &bob, "github_create_issue", &args);
        assert!(!d.allowed, "{args}");
        assert_eq!(d.condition, Some(("acme-repos".into(), Outcome::Error)));
    }
    // A tool whose only allow depends on args is listed (it may be callable) ...
    assert!(listed(&c, &bob, "github_create_issue"));
    assert!(target(&c, NS, "t").policy.view(&bob).may_allow_anything());
    // ... but nothing else is.
    assert!(!listed(&c, &bob, "github_delete_repo"));
    assert!(!call(&c, &bob, "github_delete_repo", &json!({"repo": "acme/x"})).allowed);
}

const PATH_RULES: &[(&str, &str)] = &[
    (
        "fs-all",
        "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: ['fs_*']}]}",
    ),
    (
        "shared-only",
        "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Deny, rules: [{kind: tool, names: [fs_write_file], when: '!cleanPath(args.path).startsWith(\"/srv/shared/\")'}]}",
    ),
];

#[test]
fn example_2_deny_writes_outside_srv_shared() {
    let c = setup(PATH_RULES);
    let bob = id("bob", &[], &[]);
    let write = |path: Value| call(&c, &bob, "fs_write_file", &json!({"path": path}));
    let d = write(json!("/srv/shared/notes.txt"));
    assert!(d.allowed);
    assert_eq!(d.policy.as_deref(), Some("fs-all"));
    assert_eq!(d.condition, Some(("shared-only".into(), Outcome::False)));
    for outside in [
        "/etc/passwd",
        "/srv/shared/../../etc/passwd",
        "/srv/shared/./../secret",
        "/srv/sharedx/a",
        "srv/shared/a",
        "/srv/shared",
    ] {
        let d = write(json!(outside));
        assert!(!d.allowed, "{outside} must be denied");
        assert_eq!(d.policy.as_deref(), Some("shared-only"));
        assert_eq!(d.condition, Some(("shared-only".into(), Outcome::True)));
    }
    // A Deny that cannot be evaluated applies (fail closed): missing path, wrong type.
    for args in [
        json!({}),
        json!({"path": ["/srv/shared/a"]}),
        json!({"path": 7}),
    ] {
        let d = call(&c, &bob, "fs_write_file", &args);
        assert!(!d.allowed, "{args}");
        assert_eq!(d.condition, Some(("shared-only".into(), Outcome::Error)));
    }
    // A field selected on something that is not an object is an error, not `false`: a Deny
    // on `args.opts.force` still applies when `opts` is a string.
    let c2 = setup(&[
        PATH_RULES[0],
        (
            "no-force",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Deny, rules: [{kind: tool, names: [fs_write_file], when: 'args.opts.force == true'}]}",
        ),
    ]);
    for args in [
        json!({"opts": "force"}),
        json!({"opts": {"force": true}}),
        json!({"opts": 1}),
    ] {
        assert!(!call(&c2, &bob, "fs_write_file", &args).allowed, "{args}");
    }
    assert!(
        call(
            &c2,
            &bob,
            "fs_write_file",
            &json!({"opts": {"force": false}})
        )
        .allowed
    );
    // Other tools are untouched; the conditional Deny does not hide the tool from lists.
    assert!(call(&c, &bob, "fs_read_file", &json!({"path": "/etc/passwd"})).allowed);
    assert!(listed(&c, &bob, "fs_write_file"));
}

#[test]
fn example_3_claims_department_finance() {
    let c = setup(&[(
        "finance-only",
        "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: [ledger_*], when: 'claims.department == \"finance\"'}]}",
    )]);
    let fin = with_claims(id("ann", &[], &[]), json!({"department": "finance"}));
    let eng = with_claims(id("eve", &[], &[]), json!({"department": "engineering"}));
    assert!(call(&c, &fin, "ledger_post", &json!({})).allowed);
    assert!(
        listed(&c, &fin, "ledger_post"),
        "a claims condition decides lists too"
    );
    assert!(!call(&c, &eng, "ledger_post", &json!({})).allowed);
    assert!(!listed(&c, &eng, "ledger_post"));
    // Odd claim types and absent claims never grant: errors or false, all denied.
    let odd = [
        json!({"department": ["finance"]}),
        json!({"department": {"name": "finance"}}),
        json!({"department": 1}),
        json!({"department": null}),
        json!({"Department": "finance"}),
        json!({}),
    ];
    for claims in odd {
        let who = with_claims(id("odd", &[], &[]), claims.clone());
        assert!(
            !call(&c, &who, "ledger_post", &json!({})).allowed,
            "{claims}"
        );
    }
    // No claims at all (a static token): `claims` is an empty map.
    assert!(!call(&c, &id("static", &[], &[]), "ledger_post", &json!({})).allowed);
}

#[test]
fn caller_request_and_time_variables() {
    let c = setup(&[(
        "vars",
        "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: all, names: ['*'], when: 'user == \"ann\" && \"ops\" in groups && \"admin\" in roles && tool == name && kind == \"tool\" && target == \"t\" && resource == \"\" && now > timestamp(\"2020-01-01T00:00:00Z\") && size(args) == 0'}]}",
    )]);
    assert!(call(&c, &id("ann", &["ops"], &["admin"]), "x", &json!({})).allowed);
    assert!(!call(&c, &id("ann", &["dev"], &["admin"]), "x", &json!({})).allowed);
    assert!(!call(&c, &id("bob", &["ops"], &["admin"]), "x", &json!({})).allowed);
}

#[test]
fn priority_and_deny_wins_hold_with_conditions() {
    let allow_all = "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: ['*']}]}";
    // A conditional Deny at equal priority beats an unconditional Allow when it holds.
    let c = setup(&[
        ("all", allow_all),
        (
            "no-prod",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Deny, rules: [{kind: tool, names: ['*'], when: 'args.env == \"prod\"'}]}",
        ),
    ]);
    let bob = id("bob", &[], &[]);
    assert!(!call(&c, &bob, "deploy", &json!({"env": "prod"})).allowed);
    assert!(call(&c, &bob, "deploy", &json!({"env": "dev"})).allowed);
    // A higher-priority conditional Allow overrides a lower Deny only when it holds.
    let c = setup(&[
        (
            "deny-deploy",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Deny, rules: [{kind: tool, names: [deploy]}]}",
        ),
        (
            "break-glass",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, priority: 10, rules: [{kind: tool, names: [deploy], when: 'args.ticket.matches(\"^INC-[0-9]+$\")'}]}",
        ),
    ]);
    let d = call(&c, &bob, "deploy", &json!({"ticket": "INC-42"}));
    assert!(d.allowed && d.policy.as_deref() == Some("break-glass"));
    let d = call(&c, &bob, "deploy", &json!({"ticket": "nope"}));
    assert!(!d.allowed);
    assert_eq!(d.policy.as_deref(), Some("deny-deploy"));
    // A lower-priority conditional Allow never overrides a higher unconditional Deny.
    let c = setup(&[
        (
            "deny",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Deny, priority: 5, rules: [{kind: tool, names: [x]}]}",
        ),
        (
            "allow-when",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: [x], when: 'true'}]}",
        ),
    ]);
    assert!(!call(&c, &bob, "x", &json!({})).allowed);
}

#[test]
fn invalid_or_costly_conditions_reject_the_policy_and_a_deny_fails_closed() {
    let cases: &[(&str, &str)] = &[
        ("args.repo.startsWith(", "InvalidCondition"),
        ("nosuchvar == 1", "InvalidCondition"),
        ("args.x.frobnicate()", "InvalidCondition"),
        ("args.s.matches(args.pattern)", "InvalidCondition"),
        ("args.a.all(x, args.b.all(y, x == y))", "ConditionTooCostly"),
        (
            "args.a.exists(x, args.b.exists(y, args.c.exists(z, x == y && y == z)))",
            "ConditionTooCostly",
        ),
        ("args.a.all(x, x.matches(\"^a+$\"))", "ConditionTooCostly"),
    ];
    for (expr, reason) in cases {
        let spec = |effect: &str| {
            format!(
                "{{targetRef: {{name: t}}, subjects: [{{user: bob}}], effect: {effect}, rules: [{{kind: tool, names: [x], when: {}}}]}}",
                serde_json::to_string(expr).unwrap()
            )
        };
        let allow_all = "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: all, names: ['*']}]}";
        let c = setup(&[("allow-all", allow_all), ("bad", &spec("Deny"))]);
        let a = cond(&c, ObjectKind::Policy, NS, "bad", ACCEPTED);
        assert!(!a.status, "{expr} must be rejected");
        assert_eq!(a.reason, *reason, "{expr}: {}", a.message);
        assert!(a.message.contains("rules[0].when"), "{}", a.message);
        assert!(a.message.contains("deny-all"), "{}", a.message);
        // The rejected Deny denies bob everything; others keep the allow.
        let bob = id("bob", &[], &[]);
        assert!(!call(&c, &bob, "x", &json!({})).allowed);
        assert!(!call(&c, &bob, "other", &json!({})).allowed);
        assert!(call(&c, &id("ann", &[], &[]), "x", &json!({})).allowed);
        // A rejected Allow grants nothing.
        let c = setup(&[("bad", &spec("Allow"))]);
        assert!(!cond(&c, ObjectKind::Policy, NS, "bad", ACCEPTED).status);
        assert!(!call(&c, &bob, "x", &json!({"a": [], "b": []})).allowed);
    }
    // Too long, too deep.
    let long = format!("\"{}\" == user", "a".repeat(5000));
    assert!(Condition::compile(&long).is_err());
    let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
    assert!(Condition::compile(&deep).is_err());
    let deep_list = format!("{}1{} == user", "[".repeat(100), "]".repeat(100));
    assert!(Condition::compile(&deep_list).is_err());
    // Long operator chains nest as deeply as brackets: bounded before parsing, so neither the
    // parser nor the interpreter can be driven off the stack.
    let who = id("bob", &[], &[]);
    let req = Request::listing(ItemKind::Tool, "x", "t");
    for n in [10, 100, 200, 1000, 2000] {
        for chain in [
            format!("{}1 == {}", "1 + ".repeat(n), n + 1),
            format!("user{} == 1", ".a".repeat(n)),
            format!("{}user == \"bob\"", "user == \"y\" || ".repeat(n)),
        ] {
            match Condition::compile(&chain) {
                Ok(c) => {
                    assert!(n <= 200, "a chain of {n} must be refused");
                    let o = c.eval(&who, &req);
                    assert!(matches!(o, Outcome::True | Outcome::Error), "{o:?}");
                }
                Err(e) => assert!(n >= 100, "a chain of {n} is fine: {e}"),
            }
        }
    }
    // cel 0.13 reads `!!x` as `!x`: refused rather than evaluated wrongly.
    for doubled in ["!!true", "! !true", "--1 == 1", "1 - -1 == 2"] {
        assert!(Condition::compile(doubled).is_err(), "{doubled}");
    }
    for fine in [
        "!(!true)",
        "1 != 2",
        "\"!!\" == \"--\" || true",
        "-(-1) == 1",
    ] {
        assert_eq!(
            Condition::compile(fine).unwrap().eval(&who, &req),
            Outcome::True,
            "{fine}"
        );
    }
}

#[test]
fn hostile_inputs_are_bounded_and_fail_closed() {
    // A single-loop expression at the cost limit, against the largest inputs allowed.
    let allow = Condition::compile("args.items.all(x, x.startsWith(\"a\") || x.contains(\"zz\"))")
        .expect("one macro with string work is accepted");
    let deny = Condition::compile("args.items.exists(x, x.endsWith(\"q\"))").unwrap();
    let who = id("bob", &[], &[]);
    let req = |args: &'static Value| Request {
        kind: ItemKind::Tool,
        name: "x",
        target: "t",
        args: Some(args),
        now: 0,
    };
    // Within limits: evaluated, and fast.
    let ok: &'static Value = Box::leak(Box::new(json!({"items": vec!["a".repeat(60); 1000]})));
    let t = Instant::now();
    assert_eq!(allow.eval(&who, &req(ok)), Outcome::True);
    assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());

    // Too many values, too many bytes, too deep: Exceeded, never evaluated.
    let many: &'static Value = Box::leak(Box::new(json!({"items": vec!["a"; 5000]})));
    let huge: &'static Value = Box::leak(Box::new(json!({"items": ["a".repeat(1 << 20)]})));
    let mut nested = json!("a");
    // (serde_json refuses to parse JSON nested deeper than 128, so no request is deeper.)
    for _ in 0..120 {
        nested = json!([nested]);
    }
    let nested: &'static Value = Box::leak(Box::new(json!({"items": nested})));
    for big in [many, huge, nested] {
        let t = Instant::now();
        assert_eq!(allow.eval(&who, &req(big)), Outcome::Exceeded);
        assert_eq!(deny.eval(&who, &req(big)), Outcome::Exceeded);
        assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
    }

    // In a policy: Exceeded is no match for Allow, a match for Deny.
    let c = setup(&[(
        "items",
        "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: [x], when: 'size(args.items) > 0'}]}",
    )]);
    assert!(call(&c, &who, "x", &json!({"items": [1]})).allowed);
    let d = call(&c, &who, "x", many);
    assert!(!d.allowed);
    assert_eq!(d.condition, Some(("items".into(), Outcome::Exceeded)));
    let c = setup(&[
        (
            "all",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: [x]}]}",
        ),
        (
            "no-q",
            "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Deny, rules: [{kind: tool, names: [x], when: 'args.items.exists(i, i == \"q\")'}]}",
        ),
    ]);
    assert!(call(&c, &who, "x", &json!({"items": ["a"]})).allowed);
    let d = call(&c, &who, "x", nested);
    assert!(!d.allowed);
    assert_eq!(d.condition, Some(("no-q".into(), Outcome::Exceeded)));

    // Oversized claims are Exceeded too (deny applies, allow does not).
    let c = setup(&[(
        "fin",
        "{targetRef: {name: t}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: [x], when: 'claims.department == \"finance\"'}]}",
    )]);
    let fat = with_claims(
        id("bob", &[], &[]),
        json!({"department": "finance", "junk": vec![0; 4096]}),
    );
    assert_eq!(
        call(&c, &fat, "x", &json!({})).condition,
        Some(("fin".into(), Outcome::Exceeded))
    );
}

#[test]
fn clean_path_cannot_be_walked_around() {
    for (input, want) in [
        ("/srv/shared/a", "/srv/shared/a"),
        ("/srv/shared/../../etc", "/etc"),
        ("/../../..", "/"),
        ("//srv//shared/./a/", "/srv/shared/a"),
        ("a/../../b", "../b"),
        ("", "."),
    ] {
        assert_eq!(clean_path(input), want, "{input}");
    }
}

#[test]
fn conditions_survive_the_snapshot_round_trip() {
    let c = setup(&[("acme-repos", REPO_RULE)]);
    let json = serde_json::to_string(&c.snapshot).unwrap();
    assert!(json.contains("args.repo.startsWith"));
    let back: reflow_crds::Snapshot = serde_json::from_str(&json).unwrap();
    let t = back.target(NS, "t").unwrap();
    let bob = id("bob", &[], &[]);
    let args = json!({"repo": "acme/x"});
    let req = Request {
        kind: ItemKind::Tool,
        name: "github_create_issue",
        target: "t",
        args: Some(&args),
        now: 0,
    };
    assert!(t.policy.decide_request(&bob, &req).allowed);
}

fn limited(limit: &str, effect: &str) -> Compiled {
    setup(&[(
        "rl",
        &format!(
            "{{targetRef: {{name: t}}, subjects: [{{everyone: true}}], effect: {effect}, rules: [{{kind: tool, names: ['*']}}], rateLimit: {limit}}}"
        ),
    )])
}

#[test]
fn rate_limit_specs_are_validated() {
    let c = limited("{requests: 10, interval: 1m, burst: 5, per: tool}", "Allow");
    assert!(cond(&c, ObjectKind::Policy, NS, "rl", ACCEPTED).status);
    let r = c.report(ObjectKind::Policy, NS, "rl").unwrap();
    let spec = r.rate_limit.expect("the report carries the limit");
    assert_eq!(
        (spec.requests, spec.interval_ms, spec.burst),
        (10, 60_000, 5)
    );
    assert_eq!(spec.emission_ns(), 6_000_000_000);
    let bob = id("bob", &[], &[]);
    let view = target(&c, NS, "t").policy.view(&bob);
    let req = Request::listing(ItemKind::Tool, "x", "t");
    assert_eq!(view.rate_limits(&req).len(), 1);
    // Burst defaults to requests.
    let c = limited("{requests: 3, interval: 30s}", "Allow");
    let spec = c
        .report(ObjectKind::Policy, NS, "rl")
        .unwrap()
        .rate_limit
        .unwrap();
    assert_eq!((spec.burst, spec.interval_ms), (3, 30_000));

    for (bad, effect) in [
        ("{requests: 0, interval: 1m}", "Allow"),
        ("{requests: 10, interval: 0s}", "Allow"),
        ("{requests: 10, interval: 25h}", "Allow"),
        ("{requests: 10, interval: 500ms}", "Allow"),
        ("{requests: 10, interval: '-1m'}", "Allow"),
        ("{requests: 10, interval: 1d}", "Allow"),
        ("{requests: 10, interval: m}", "Allow"),
        ("{requests: 10, interval: 99999999999999999999h}", "Allow"),
        ("{requests: 10, interval: 1m, burst: 0}", "Allow"),
        ("{requests: 10, interval: 1m}", "Deny"),
    ] {
        let c = limited(bad, effect);
        let a = cond(&c, ObjectKind::Policy, NS, "rl", ACCEPTED);
        assert!(!a.status, "{bad} {effect} must be rejected");
        assert_eq!(a.reason, "InvalidRateLimit", "{bad}: {}", a.message);
        assert!(
            c.report(ObjectKind::Policy, NS, "rl")
                .unwrap()
                .rate_limit
                .is_none()
        );
        // Rejected: an Allow grants nothing, a Deny denies all.
        assert!(!call(&c, &bob, "x", &json!({})).allowed);
    }
}

#[test]
fn rate_limits_apply_once_per_policy_and_follow_conditions() {
    let c = setup(&[(
        "rl",
        "{targetRef: {name: t}, subjects: [{user: bob}, {group: dev}], effect: Allow, rules: [{kind: tool, names: ['a*']}, {kind: tool, names: [ab], when: 'args.n > 1'}], rateLimit: {requests: 1, interval: 1s}}",
    )]);
    let bob = id("bob", &["dev"], &[]);
    let view = target(&c, NS, "t").policy.view(&bob);
    let args = json!({"n": 5});
    let req = |name| Request {
        kind: ItemKind::Tool,
        name,
        target: "t",
        args: Some(&args),
        now: 0,
    };
    // Two subjects and two rules match "ab": charged once.
    assert_eq!(view.rate_limits(&req("ab")).len(), 1);
    assert_eq!(view.rate_limits(&req("b")).len(), 0);
    let ann = id("ann", &[], &[]);
    assert!(
        target(&c, NS, "t")
            .policy
            .view(&ann)
            .rate_limits(&req("ab"))
            .is_empty()
    );
}

#[test]
fn the_readme_examples_compile_and_mean_what_they_say() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme
        .find("### Policy conditions (`when:`) and rate limits")
        .expect("the README section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n### ").map_or(section.len(), |i| i + 4)];
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block");
    let ns = "dev-tools";
    let mut all = String::new();
    for t in ["github", "fs", "ledger"] {
        all.push_str(&http_target(ns, t));
    }
    all.push_str(yaml);
    let c = compile(&all);
    for p in ["acme-repos", "fs-shared-only", "finance-ledger"] {
        let a = cond(&c, ObjectKind::Policy, ns, p, ACCEPTED);
        assert!(a.status, "{p}: {}", a.message);
    }
    let dev = id("dana", &["developers"], &[]);
    let decide = |t: &str, who: &Identity, tool: &str, args: Value| {
        let req = Request {
            kind: ItemKind::Tool,
            name: tool,
            target: t,
            args: Some(&args),
            now: 0,
        };
        target(&c, ns, t).policy.decide_request(who, &req).allowed
    };
    assert!(decide(
        "github",
        &dev,
        "create_issue",
        json!({"repo": "acme/x"})
    ));
    assert!(!decide(
        "github",
        &dev,
        "create_issue",
        json!({"repo": "other/x"})
    ));
    let fin = with_claims(id("fi", &[], &[]), json!({"department": "finance"}));
    assert!(decide("ledger", &fin, "post", json!({})));
    assert!(!decide("ledger", &dev, "post", json!({})));
    let spec = c
        .report(ObjectKind::Policy, ns, "finance-ledger")
        .and_then(|r| r.rate_limit)
        .expect("a rate limit");
    assert_eq!(
        (spec.requests, spec.interval_ms, spec.burst),
        (60, 60_000, 10)
    );
}
