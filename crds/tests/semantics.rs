//! DESIGN §3 semantics 1–5, the compiler's error cases, and the snapshot's integrity guarantees,
//! each from inline manifests through `loader::load_str` + `compile`.

mod common;

use common::*;
use reflow_crds::compile::{ACCEPTED, CONFLICTED, ObjectKind, RESOLVED_REFS};
use reflow_crds::snapshot::{Decision, ItemKind};
use reflow_crds::{SealingKey, Snapshot};

const NS: &str = "team";

fn all_tool(names: &str) -> String {
    format!("rules: [{{kind: tool, names: [{names}]}}]")
}

// ---- semantic 1 --------------------------------------------------------------------------------

#[test]
fn semantic_1_default_deny() {
    // A Target with no Policy: nobody may do anything, and nothing was seeded.
    let c = compile(&http_target(NS, "bare"));
    let bare = target(&c, NS, "bare");
    assert!(bare.policy.rules().is_empty(), "no rule is seeded");
    for who in [id("alice", &["dev"], &["admin"]), id("root", &[], &[])] {
        for kind in ItemKind::ALL {
            assert_eq!(
                bare.policy.decide(&who, kind, "anything"),
                Decision::DEFAULT_DENY
            );
        }
        let view = bare.policy.view(&who);
        assert!(!view.may_allow_anything());
        assert_eq!(view.visible(ItemKind::Tool, ["a", "b"]).count(), 0);
    }

    // With one allow: only what it names, only for its subjects; the rest is default deny.
    let yaml = http_target(NS, "gh")
        + &policy_doc(
            NS,
            "dev-read",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{group: dev}}], {}, effect: Allow}}",
                all_tool("'get_*', create_issue")
            ),
        );
    let c = compile(&yaml);
    let dev = id("bob", &["dev"], &[]);
    let outsider = id("eve", &["ops"], &["dev"]); // a *role* named dev is not the group dev
    assert_eq!(
        decide(&c, NS, "gh", &dev, ItemKind::Tool, "get_repo"),
        Decision {
            allowed: true,
            policy: Some("dev-read".into()),
            condition: None,
        }
    );
    assert!(tool_allowed(&c, NS, "gh", &dev, "create_issue"));
    assert_eq!(
        decide(&c, NS, "gh", &dev, ItemKind::Tool, "delete_repo"),
        Decision::DEFAULT_DENY
    );
    // Rule kind `tool` does not cover resources or prompts.
    assert_eq!(
        decide(&c, NS, "gh", &dev, ItemKind::Resource, "get_repo"),
        Decision::DEFAULT_DENY
    );
    for name in ["get_repo", "create_issue", "delete_repo"] {
        assert_eq!(
            decide(&c, NS, "gh", &outsider, ItemKind::Tool, name),
            Decision::DEFAULT_DENY
        );
    }
    let pol = &target(&c, NS, "gh").policy;
    assert!(pol.view(&dev).may_allow_anything());
    assert!(!pol.view(&outsider).may_allow_anything());
    let names = [
        "delete_repo",
        "get_a",
        "create_issue",
        "create_issues",
        "get_b",
    ];
    assert_eq!(
        pol.view(&dev)
            .visible(ItemKind::Tool, names)
            .collect::<Vec<_>>(),
        ["get_a", "create_issue", "get_b"],
        "visible keeps input order and hides denied names"
    );

    // A deny-only target allows nothing to anyone.
    let yaml = http_target(NS, "gh")
        + &policy_doc(
            NS,
            "deny",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Deny}}",
                all_tool("'*'")
            ),
        );
    let c = compile(&yaml);
    assert!(!target(&c, NS, "gh").policy.view(&dev).may_allow_anything());
    assert!(!tool_allowed(&c, NS, "gh", &dev, "get_repo"));
}

// ---- semantic 2 --------------------------------------------------------------------------------

fn priority_yaml(allow_prio: i32, deny_prio: i32, reversed: bool) -> String {
    let mut docs = [
        http_target(NS, "gh"),
        policy_doc(
            NS,
            "dev-all",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{group: dev}}], {}, effect: Allow, priority: {allow_prio}}}",
                all_tool("'*'")
            ),
        ),
        policy_doc(
            NS,
            "no-delete",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Deny, priority: {deny_prio}}}",
                all_tool("'delete_*'")
            ),
        ),
    ];
    if reversed {
        docs.reverse();
    }
    docs.concat()
}

#[test]
fn semantic_2_priority_then_deny_wins_ties() {
    let dev = id("bob", &["dev"], &[]);
    // Higher-priority allow beats a lower-priority deny.
    let c = compile(&priority_yaml(10, 5, false));
    assert_eq!(
        decide(&c, NS, "gh", &dev, ItemKind::Tool, "delete_repo"),
        Decision {
            allowed: true,
            policy: Some("dev-all".into()),
            condition: None,
        }
    );
    // Equal priority: deny wins, whatever the subject kinds and input order.
    for reversed in [false, true] {
        let c = compile(&priority_yaml(10, 10, reversed));
        assert_eq!(
            decide(&c, NS, "gh", &dev, ItemKind::Tool, "delete_repo"),
            Decision {
                allowed: false,
                policy: Some("no-delete".into()),
                condition: None,
            }
        );
        assert!(tool_allowed(&c, NS, "gh", &dev, "get_repo"));
    }
    // Higher-priority deny beats allow; negative priorities order too.
    let c = compile(&priority_yaml(-10, -5, false));
    assert!(!tool_allowed(&c, NS, "gh", &dev, "delete_repo"));
    let c = compile(&priority_yaml(1000, 999, false));
    assert!(tool_allowed(&c, NS, "gh", &dev, "delete_repo"));
}

#[test]
fn semantic_2_exact_names_and_globs_rank_the_same_way() {
    // The index keeps exact names in maps and globs in lists; ranking must not depend on that.
    let p = |name: &str, subject: &str, names: &str, effect: &str, prio: i32| {
        policy_doc(
            NS,
            name,
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{subject}], {}, effect: {effect}, priority: {prio}}}",
                all_tool(names)
            ),
        )
    };
    let alice = id("alice", &["dev"], &["admin"]);
    let cases = [
        // (exact allow prio, glob deny prio, allowed?)
        (1, 1, false),
        (2, 1, true),
        (1, 2, false),
    ];
    for (ap, dp, want) in cases {
        let c = compile(
            &(http_target(NS, "gh")
                + &p("exact-allow", "{user: alice}", "push", "Allow", ap)
                + &p("glob-deny", "{role: admin}", "'pu?h', 'x*'", "Deny", dp)),
        );
        assert_eq!(
            tool_allowed(&c, NS, "gh", &alice, "push"),
            want,
            "allow {ap} deny {dp}"
        );
        // The other way round: exact deny vs glob allow.
        let c = compile(
            &(http_target(NS, "gh")
                + &p("exact-deny", "{group: dev}", "push", "Deny", dp)
                + &p("glob-allow", "{everyone: true}", "'*'", "Allow", ap)),
        );
        assert_eq!(
            tool_allowed(&c, NS, "gh", &alice, "push"),
            ap > dp,
            "glob allow {ap} exact deny {dp}"
        );
    }
}

#[test]
fn semantic_2_rule_kinds() {
    let yaml = http_target(NS, "gh")
        + &policy_doc(
            NS,
            "mixed",
            "{targetRef: {name: gh}, subjects: [{everyone: true}], effect: Allow, rules: [{kind: tool, names: [t]}, {kind: resource, names: ['repo://*']}, {kind: prompt, names: [p]}, {names: [anything]}]}",
        );
    let c = compile(&yaml);
    let who = id("x", &[], &[]);
    let d = |k, n| decide(&c, NS, "gh", &who, k, n).allowed;
    assert!(d(ItemKind::Tool, "t") && !d(ItemKind::Resource, "t") && !d(ItemKind::Prompt, "t"));
    assert!(d(ItemKind::Resource, "repo://org/x") && !d(ItemKind::Tool, "repo://org/x"));
    assert!(d(ItemKind::Prompt, "p") && !d(ItemKind::Tool, "p"));
    // An omitted kind is `all`.
    for k in ItemKind::ALL {
        assert!(d(k, "anything"));
    }
}

/// A tiny deterministic PRNG (no dev-dependency needed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// The index must decide exactly like the obvious evaluator: over every applicable rule, the
/// highest priority wins, deny wins ties, the earliest rule names the deciding policy.
#[test]
fn semantic_2_index_agrees_with_a_naive_evaluator() {
    use reflow_crds::snapshot::{Effect, RuleKind, SubjectMatch};

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let users = ["alice", "bob", "carol"];
    let groups = ["dev", "ops", "sec"];
    let roles = ["admin", "viewer"];
    // Patterns of every shape the index files differently: exact, shared literal prefixes (radix
    // splits), suffixes, neither, classes, escapes and multi-byte characters.
    let patterns = [
        "get_repo",
        "get_*",
        "get_re*",
        "g*",
        "*_repo",
        "*po",
        "*",
        "delete_?epo",
        "[dg]*",
        "list_[!x]*",
        "create_issue",
        "repo://*",
        "get_repo_x",
        "*_re*",
        "?et_*",
        "\u{fc}*",
        "*\u{df}",
        "get_*_x",
        "\\*lit",
        "lis*",
        "*e*o*",
        "l*_x",
        "get_*o",
        "*_?",
    ];
    let names = [
        "get_repo",
        "get_user",
        "get_re",
        "g",
        "delete_repo",
        "list_a",
        "list_x",
        "lis",
        "create_issue",
        "repo://a",
        "get_repo_x",
        "other",
        "\u{fc}x",
        "ma\u{df}",
        "*lit",
        "",
        "get__x",
        "xlit",
        "get_ax",
        "get_x_",
        "list_ax",
        "get_o",
        "xet_repo",
        "repo",
        "a_b",
    ];
    let mut docs = http_target(NS, "gh");
    for i in 0..150 {
        let subject = match rng.next() % 4 {
            0 => format!("{{user: {}}}", rng.pick(&users)),
            1 => format!("{{group: {}}}", rng.pick(&groups)),
            2 => format!("{{role: {}}}", rng.pick(&roles)),
            _ => "{everyone: true}".to_owned(),
        };
        let kind = rng.pick(&["tool", "resource", "prompt", "all"]).to_owned();
        let n = 1 + rng.next() % 3;
        let pats: Vec<String> = (0..n)
            .map(|_| format!("'{}'", rng.pick(&patterns)))
            .collect();
        let effect = if rng.next().is_multiple_of(3) {
            "Deny"
        } else {
            "Allow"
        };
        let prio = (rng.next() % 5) as i32 - 2;
        docs += &policy_doc(
            NS,
            &format!("p{i:03}"),
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{subject}], rules: [{{kind: {kind}, names: [{}]}}], effect: {effect}, priority: {prio}}}",
                pats.join(", ")
            ),
        );
    }
    let c = compile(&docs);
    let pol = &target(&c, NS, "gh").policy;
    assert_eq!(pol.rules().len(), 150);

    let naive = |who: &reflow_crds::Identity, kind: ItemKind, name: &str| -> Decision {
        let mut best: Option<(i32, Effect, usize)> = None;
        for (i, r) in pol.rules().iter().enumerate() {
            let applies = match &r.subject {
                SubjectMatch::User(u) => **u == *who.user,
                SubjectMatch::Group(g) => who.in_group(g),
                SubjectMatch::Role(x) => who.has_role(x),
                SubjectMatch::Everyone => true,
            };
            let covers = matches!(
                (r.kind, kind),
                (RuleKind::All, _)
                    | (RuleKind::Tool, ItemKind::Tool)
                    | (RuleKind::Resource, ItemKind::Resource)
                    | (RuleKind::Prompt, ItemKind::Prompt)
            );
            if !(applies && covers && r.names.iter().any(|g| g.matches(name))) {
                continue;
            }
            let stronger = match best {
                None => true,
                Some((p, e, _)) => r.priority > p || (r.priority == p && r.effect < e),
            };
            if stronger {
                best = Some((r.priority, r.effect, i));
            }
        }
        match best {
            None => Decision::DEFAULT_DENY,
            Some((_, e, i)) => Decision {
                allowed: e == Effect::Allow,
                policy: Some(pol.rules()[i].policy.clone()),
                condition: None,
            },
        }
    };

    let mut checked = 0;
    let mut allowed = 0;
    for u in users.iter().chain(["nobody"].iter()) {
        for gmask in 0..8u32 {
            for rmask in 0..4u32 {
                let gs: Vec<&str> = (0..3)
                    .filter(|b| gmask & (1 << b) != 0)
                    .map(|b| groups[b])
                    .collect();
                let rs: Vec<&str> = (0..2)
                    .filter(|b| rmask & (1 << b) != 0)
                    .map(|b| roles[b])
                    .collect();
                let who = id(u, &gs, &rs);
                let view = pol.view(&who);
                for kind in ItemKind::ALL {
                    for name in names {
                        let want = naive(&who, kind, name);
                        assert_eq!(view.decide(kind, name), want, "{who:?} {kind:?} {name}");
                        assert_eq!(pol.decide(&who, kind, name), want);
                        checked += 1;
                        allowed += usize::from(want.allowed);
                    }
                }
            }
        }
    }
    // The random policies must exercise both outcomes, or this test proves nothing.
    assert!(
        allowed > checked / 10 && allowed < checked * 9 / 10,
        "{allowed}/{checked}"
    );
}

// ---- semantic 3 --------------------------------------------------------------------------------

#[test]
fn semantic_3_invalid_pattern_rejects_policy_never_fails_open() {
    // A rejected Allow grants nothing: not even its valid patterns.
    let yaml = http_target(NS, "gh")
        + &policy_doc(
            NS,
            "bad-allow",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Allow, priority: 10}}",
                all_tool("'get_*', 'list_[a-'")
            ),
        );
    let c = compile(&yaml);
    let acc = cond(&c, ObjectKind::Policy, NS, "bad-allow", ACCEPTED);
    assert!(!acc.status);
    assert_eq!(acc.reason, "InvalidPattern");
    assert!(acc.message.contains("list_[a-"), "{}", acc.message);
    assert!(acc.message.contains("grants nothing"), "{}", acc.message);
    assert!(c.problems().any(|r| r.name == "bad-allow"));
    let anyone = id("alice", &[], &[]);
    assert!(target(&c, NS, "gh").policy.rules().is_empty());
    assert!(!tool_allowed(&c, NS, "gh", &anyone, "get_repo"));
    assert!(
        !target(&c, NS, "gh")
            .policy
            .view(&anyone)
            .may_allow_anything()
    );

    // A rejected Deny is enforced as deny-all for its subjects, at its priority.
    let yaml = http_target(NS, "gh")
        + &policy_doc(
            NS,
            "allow-all",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Allow, priority: 10}}",
                all_tool("'*'")
            ),
        )
        + &policy_doc(
            NS,
            "vip-allow",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{user: vip}}], {}, effect: Allow, priority: 100}}",
                all_tool("'*'")
            ),
        )
        + &policy_doc(
            NS,
            "bad-deny",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{group: contractors}}, {{user: vip}}], {}, effect: Deny, priority: 50}}",
                all_tool("'delete_*', '[z-a]'")
            ),
        );
    let c = compile(&yaml);
    let acc = cond(&c, ObjectKind::Policy, NS, "bad-deny", ACCEPTED);
    assert!(!acc.status);
    assert_eq!(acc.reason, "InvalidPattern");
    assert!(acc.message.contains("fail closed"), "{}", acc.message);
    let contractor = id("carl", &["contractors"], &[]);
    let employee = id("emma", &["staff"], &[]);
    for kind in ItemKind::ALL {
        // Not just `delete_*`: everything, for every kind.
        assert_eq!(
            decide(&c, NS, "gh", &contractor, kind, "get_repo"),
            Decision {
                allowed: false,
                policy: Some("bad-deny".into()),
                condition: None,
            }
        );
    }
    assert!(
        tool_allowed(&c, NS, "gh", &employee, "get_repo"),
        "other subjects are unaffected"
    );
    assert!(tool_allowed(&c, NS, "gh", &employee, "delete_repo"));
    // Its stated priority still applies: a stronger allow is not overridden.
    assert!(tool_allowed(
        &c,
        NS,
        "gh",
        &id("vip", &[], &[]),
        "delete_repo"
    ));

    // A Deny whose subjects are unreadable denies everyone; one whose target cannot be resolved
    // denies on every Target of the namespace.
    let yaml = http_target(NS, "gh")
        + &http_target(NS, "jira")
        + &http_target("other", "wiki")
        + &policy_doc(
            "other",
            "wiki-all",
            &format!(
                "{{targetRef: {{name: wiki}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
                all_tool("'*'")
            ),
        )
        + &policy_doc(
            NS,
            "all",
            &format!(
                "{{targetSelector: {{}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
                all_tool("'*'")
            ),
        )
        + &policy_doc(
            NS,
            "broken-deny",
            &format!(
                "{{subjects: [{{user: a, group: b}}], {}, effect: Deny}}",
                all_tool("delete_repo")
            ),
        );
    let c = compile(&yaml);
    let acc = cond(&c, ObjectKind::Policy, NS, "broken-deny", ACCEPTED);
    assert!(!acc.status);
    assert_eq!(acc.reason, "Invalid");
    let anyone = id("zed", &[], &[]);
    assert!(!tool_allowed(&c, NS, "gh", &anyone, "get_repo"));
    assert!(!tool_allowed(&c, NS, "jira", &anyone, "get_repo"));
    assert!(
        tool_allowed(&c, "other", "wiki", &anyone, "get_repo"),
        "other namespaces unaffected"
    );
}

#[test]
fn semantic_3_patterns_are_anchored() {
    let yaml = http_target(NS, "gh")
        + &policy_doc(
            NS,
            "p",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
                all_tool("'github_*', issue")
            ),
        );
    let c = compile(&yaml);
    let who = id("a", &[], &[]);
    assert!(tool_allowed(&c, NS, "gh", &who, "github_x"));
    assert!(!tool_allowed(&c, NS, "gh", &who, "my_github_x"));
    assert!(tool_allowed(&c, NS, "gh", &who, "issue"));
    assert!(!tool_allowed(&c, NS, "gh", &who, "issues"));
    assert!(!tool_allowed(&c, NS, "gh", &who, "create_issue"));
}

#[test]
fn every_invalid_pattern_kind_rejects_the_policy() {
    for bad in ["''", "'a[bc'", "'a[]'", "'a\\'", "'[z-a]'", "\"a\\u0007b\""] {
        let yaml = http_target(NS, "gh")
            + &policy_doc(
                NS,
                "p",
                &format!(
                    "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
                    all_tool(&format!("ok_*, {bad}"))
                ),
            );
        let c = compile(&yaml);
        let acc = cond(&c, ObjectKind::Policy, NS, "p", ACCEPTED);
        assert!(!acc.status, "{bad} accepted");
        assert_eq!(acc.reason, "InvalidPattern", "{bad}");
        assert!(
            !tool_allowed(&c, NS, "gh", &id("a", &[], &[]), "ok_x"),
            "{bad} failed open"
        );
    }
}

// ---- semantic 4 --------------------------------------------------------------------------------

#[test]
fn semantic_4_same_namespace_references_only() {
    let yaml = target_doc("a", "gh", "tier: x", "{transport: streamableHttp, url: 'http://gh', prefix: gh-a}")
        + &target_doc("b", "local", "", "{transport: stdio, command: srv, prefix: local-b}")
        + &secret_doc("a", "tokens", &[("k", "secret-in-a")])
        // Policies in b naming a's Target, by ref and by selector.
        + &policy_doc(
            "b",
            "by-ref",
            &format!("{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Allow}}", all_tool("'*'")),
        )
        + &policy_doc(
            "b",
            "by-selector",
            &format!(
                "{{targetSelector: {{matchLabels: {{tier: x}}}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
                all_tool("'*'")
            ),
        )
        // A Credential in b naming a's Target.
        + &credential_doc(
            "b",
            "cross-target",
            "{targetRef: {name: gh}, subject: {default: true}, headers: [{name: authorization, secretKeyRef: {name: tokens, key: k}}]}",
        )
        // A Credential in b for b's Target reading a's Secret.
        + &credential_doc(
            "b",
            "cross-secret",
            "{targetRef: {name: local}, subject: {default: true}, env: [{name: TOKEN, secretKeyRef: {name: tokens, key: k}}]}",
        );
    let c = compile(&yaml);
    let anyone = id("alice", &[], &[]);

    let r = cond(&c, ObjectKind::Policy, "b", "by-ref", RESOLVED_REFS);
    assert_eq!((r.status, r.reason.as_str()), (false, "TargetNotFound"));
    let r = cond(&c, ObjectKind::Policy, "b", "by-selector", RESOLVED_REFS);
    assert_eq!((r.status, r.reason.as_str()), (false, "NoTargetsSelected"));
    // The policies themselves are well-formed; only their references fail.
    assert!(cond(&c, ObjectKind::Policy, "b", "by-ref", ACCEPTED).status);
    assert!(
        target(&c, "a", "gh").policy.rules().is_empty(),
        "nothing applied to a/gh"
    );
    assert!(target(&c, "b", "local").policy.rules().is_empty());
    assert!(!tool_allowed(&c, "a", "gh", &anyone, "x"));

    let r = cond(
        &c,
        ObjectKind::Credential,
        "b",
        "cross-target",
        RESOLVED_REFS,
    );
    assert_eq!((r.status, r.reason.as_str()), (false, "TargetNotFound"));
    let r = cond(
        &c,
        ObjectKind::Credential,
        "b",
        "cross-secret",
        RESOLVED_REFS,
    );
    assert_eq!((r.status, r.reason.as_str()), (false, "SecretNotFound"));
    assert!(target(&c, "a", "gh").credentials.is_empty());
    assert!(target(&c, "b", "local").credentials.is_empty());
    assert!(injected(&c, &key(), "b", "local", &anyone).is_empty());
    assert!(c.problems().count() >= 4);

    // The same references inside namespace a resolve.
    let yaml = yaml
        + &policy_doc(
            "a",
            "by-ref",
            &format!(
                "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
                all_tool("'*'")
            ),
        )
        + &credential_doc(
            "a",
            "same-ns",
            "{targetRef: {name: gh}, subject: {default: true}, headers: [{name: authorization, secretKeyRef: {name: tokens, key: k}}]}",
        );
    let c = compile(&yaml);
    assert!(cond(&c, ObjectKind::Policy, "a", "by-ref", RESOLVED_REFS).status);
    assert!(tool_allowed(&c, "a", "gh", &anyone, "x"));
    assert_eq!(
        injected(&c, &key(), "a", "gh", &anyone),
        [("header:authorization".to_owned(), "secret-in-a".to_owned())].into()
    );
    // Still nothing from b.
    assert!(
        !cond(
            &c,
            ObjectKind::Credential,
            "b",
            "cross-target",
            RESOLVED_REFS
        )
        .status
    );
}

#[test]
fn semantic_4_same_target_name_in_two_namespaces_is_two_targets() {
    let yaml = target_doc(
        "a",
        "gh",
        "",
        "{transport: auto, url: 'http://a', prefix: gh-a}",
    ) + &target_doc(
        "b",
        "gh",
        "",
        "{transport: auto, url: 'http://b', prefix: gh-b}",
    ) + &policy_doc(
        "a",
        "p",
        &format!(
            "{{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
            all_tool("'*'")
        ),
    );
    let c = compile(&yaml);
    let who = id("u", &[], &[]);
    assert!(tool_allowed(&c, "a", "gh", &who, "x"));
    assert!(!tool_allowed(&c, "b", "gh", &who, "x"));
    let (t, rest) = c.snapshot.route("gh-b_create_issue").expect("routes");
    assert_eq!((&*t.namespace, &*t.name, rest), ("b", "gh", "create_issue"));
}

// ---- semantic 5 --------------------------------------------------------------------------------

fn precedence_yaml(reversed: bool) -> String {
    let h =
        |name: &str, key: &str| format!("{{name: {name}, secretKeyRef: {{name: s, key: {key}}}}}");
    let mut docs = [
        http_target(NS, "api"),
        secret_doc(
            NS,
            "s",
            &[
                ("user", "v-user"),
                ("group", "v-group"),
                ("role", "v-role"),
                ("default", "v-default"),
            ],
        ),
        credential_doc(
            NS,
            "for-alice",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{user: alice}}, headers: [{}]}}",
                h("Authorization", "user")
            ),
        ),
        credential_doc(
            NS,
            "for-dev",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{group: dev}}, headers: [{}, {}]}}",
                h("authorization", "group"),
                h("x-team", "group")
            ),
        ),
        credential_doc(
            NS,
            "for-admin",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{role: admin}}, headers: [{}, {}, {}]}}",
                h("AUTHORIZATION", "role"),
                h("x-team", "role"),
                h("x-role", "role")
            ),
        ),
        credential_doc(
            NS,
            "fallback",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{default: true}}, headers: [{}, {}, {}, {}]}}",
                h("authorization", "default"),
                h("x-team", "default"),
                h("x-role", "default"),
                h("x-default", "default")
            ),
        ),
    ];
    if reversed {
        docs.reverse();
    }
    docs.concat()
}

#[test]
fn semantic_5_credential_precedence_user_group_role_default() {
    let k = key();
    for reversed in [false, true] {
        let c = compile(&precedence_yaml(reversed));
        let m = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (format!("header:{a}"), (*b).to_owned()))
                .collect()
        };
        // Per injected key, the strongest applicable subject.
        assert_eq!(
            injected(&c, &k, NS, "api", &id("alice", &["dev"], &["admin"])),
            m(&[
                ("authorization", "v-user"),
                ("x-team", "v-group"),
                ("x-role", "v-role"),
                ("x-default", "v-default")
            ])
        );
        assert_eq!(
            injected(&c, &k, NS, "api", &id("bob", &["dev"], &["admin"])),
            m(&[
                ("authorization", "v-group"),
                ("x-team", "v-group"),
                ("x-role", "v-role"),
                ("x-default", "v-default")
            ])
        );
        assert_eq!(
            injected(&c, &k, NS, "api", &id("carol", &[], &["admin"])),
            m(&[
                ("authorization", "v-role"),
                ("x-team", "v-role"),
                ("x-role", "v-role"),
                ("x-default", "v-default")
            ])
        );
        assert_eq!(
            injected(&c, &k, NS, "api", &id("dave", &["ops"], &["viewer"])),
            m(&[
                ("authorization", "v-default"),
                ("x-team", "v-default"),
                ("x-role", "v-default"),
                ("x-default", "v-default")
            ])
        );
        assert_eq!(
            sources(&c, NS, "api", &id("alice", &["dev"], &["admin"]))["header:authorization"],
            "for-alice"
        );
        // Different tiers never conflict.
        for cred in ["for-alice", "for-dev", "for-admin", "fallback"] {
            let r = cond(&c, ObjectKind::Credential, NS, cred, CONFLICTED);
            assert!(!r.status, "{cred}: {r:?}");
            assert!(cond(&c, ObjectKind::Credential, NS, cred, RESOLVED_REFS).status);
        }
        assert_eq!(c.problems().count(), 0);
    }
}

fn tie_yaml(reversed: bool) -> String {
    let h = |key: &str| {
        format!("headers: [{{name: authorization, secretKeyRef: {{name: s, key: {key}}}}}]")
    };
    let mut docs = [
        http_target(NS, "api"),
        secret_doc(
            NS,
            "s",
            &[
                ("a", "v-a"),
                ("b", "v-b"),
                ("c1", "v-c1"),
                ("c2", "v-c2"),
                ("u1", "v-u1"),
                ("u2", "v-u2"),
            ],
        ),
        credential_doc(
            NS,
            "zz-group-a",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{group: a}}, {}}}",
                h("a")
            ),
        ),
        credential_doc(
            NS,
            "aa-group-b",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{group: b}}, {}}}",
                h("b")
            ),
        ),
        credential_doc(
            NS,
            "c2",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{role: c}}, {}}}",
                h("c2")
            ),
        ),
        credential_doc(
            NS,
            "c1",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{role: c}}, {}}}",
                h("c1")
            ),
        ),
        // Different users never overlap: no conflict.
        credential_doc(
            NS,
            "user-1",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{user: u1}}, {}}}",
                h("u1")
            ),
        ),
        credential_doc(
            NS,
            "user-2",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{user: u2}}, {}}}",
                h("u2")
            ),
        ),
    ];
    if reversed {
        docs.reverse();
    }
    docs.concat()
}

#[test]
fn semantic_5_ties_are_deterministic_and_reported() {
    let k = key();
    let mut hashes = Vec::new();
    for reversed in [false, true] {
        let c = compile(&tie_yaml(reversed));
        hashes.push(c.snapshot.hash().to_owned());
        // Group a and group b both set authorization: the lower subject name wins, not the
        // Credential name and not input order.
        let both = id("x", &["b", "a"], &[]);
        assert_eq!(
            injected(&c, &k, NS, "api", &both)["header:authorization"],
            "v-a"
        );
        assert_eq!(
            sources(&c, NS, "api", &both)["header:authorization"],
            "zz-group-a"
        );
        assert_eq!(
            injected(&c, &k, NS, "api", &id("y", &["b"], &[]))["header:authorization"],
            "v-b"
        );
        // Same subject, two Credentials: the lower Credential name wins.
        assert_eq!(
            injected(&c, &k, NS, "api", &id("z", &[], &["c"]))["header:authorization"],
            "v-c1"
        );

        for (cred, other) in [
            ("zz-group-a", "aa-group-b"),
            ("aa-group-b", "zz-group-a"),
            ("c1", "c2"),
            ("c2", "c1"),
        ] {
            let r = cond(&c, ObjectKind::Credential, NS, cred, CONFLICTED);
            assert!(r.status, "{cred} not reported as conflicted");
            assert_eq!(r.reason, "AmbiguousPrecedence");
            assert!(
                r.message.contains(&format!("{other:?}")),
                "{cred}: {}",
                r.message
            );
            assert!(r.message.contains("authorization"), "{}", r.message);
            // Still resolved and used: ambiguity is reported, not fatal.
            assert!(cond(&c, ObjectKind::Credential, NS, cred, RESOLVED_REFS).status);
        }
        let r = cond(&c, ObjectKind::Credential, NS, "zz-group-a", CONFLICTED);
        assert!(
            r.message
                .contains(r#"gets Credential "zz-group-a"'s value"#),
            "{}",
            r.message
        );
        let r = cond(&c, ObjectKind::Credential, NS, "c2", CONFLICTED);
        assert!(
            r.message.contains(r#"gets Credential "c1"'s value"#),
            "{}",
            r.message
        );
        for cred in ["user-1", "user-2"] {
            assert!(
                !cond(&c, ObjectKind::Credential, NS, cred, CONFLICTED).status,
                "{cred}"
            );
        }
        let mut problems: Vec<&str> = c.problems().map(|r| r.name.as_str()).collect();
        problems.sort();
        assert_eq!(problems, ["aa-group-b", "c1", "c2", "zz-group-a"]);
    }
    assert_eq!(
        hashes[0], hashes[1],
        "input order does not change the snapshot"
    );
}

// ---- compiler error cases ----------------------------------------------------------------------

#[test]
fn prefix_conflict_has_a_deterministic_winner() {
    // `a-b` and `a.b` both default to prefix `a-b`; an explicit prefix can collide across
    // namespaces too. The first by namespace/name wins, whatever the input order.
    let docs = [
        http_target(NS, "a.b"),
        http_target(NS, "a-b"),
        target_doc(
            "zeta",
            "one",
            "",
            "{transport: auto, url: 'http://z', prefix: shared}",
        ),
        target_doc(
            "alpha",
            "two",
            "",
            "{transport: auto, url: 'http://a', prefix: shared}",
        ),
        policy_doc(
            NS,
            "p",
            &format!(
                "{{targetRef: {{name: a.b}}, subjects: [{{everyone: true}}], {}, effect: Allow}}",
                all_tool("'*'")
            ),
        ),
    ];
    for reversed in [false, true] {
        let mut d = docs.to_vec();
        if reversed {
            d.reverse();
        }
        let c = compile(&d.concat());
        assert!(cond(&c, ObjectKind::Target, NS, "a-b", ACCEPTED).status);
        let lost = cond(&c, ObjectKind::Target, NS, "a.b", ACCEPTED);
        assert_eq!(
            (lost.status, lost.reason.as_str()),
            (false, "PrefixConflict")
        );
        assert!(lost.message.contains("team/a-b"), "{}", lost.message);
        assert!(cond(&c, ObjectKind::Target, "alpha", "two", ACCEPTED).status);
        let lost = cond(&c, ObjectKind::Target, "zeta", "one", ACCEPTED);
        assert_eq!(
            (lost.status, lost.reason.as_str()),
            (false, "PrefixConflict")
        );
        assert!(c.snapshot.target(NS, "a.b").is_none());
        assert!(c.snapshot.target("zeta", "one").is_none());
        assert_eq!(&*c.snapshot.target_by_prefix("shared").unwrap().name, "two");
        assert_eq!(&*c.snapshot.target_by_prefix("a-b").unwrap().name, "a-b");
        // A policy naming the loser does not resolve (and does not land on the winner).
        let r = cond(&c, ObjectKind::Policy, NS, "p", RESOLVED_REFS);
        assert_eq!((r.status, r.reason.as_str()), (false, "TargetNotFound"));
        assert!(target(&c, NS, "a-b").policy.rules().is_empty());
    }
}

#[test]
fn invalid_prefixes_are_rejected() {
    let yaml = target_doc(
        NS,
        "explicit",
        "",
        "{transport: auto, url: 'http://x', prefix: Bad_Prefix}",
    ) + &target_doc(
        NS,
        "dash",
        "",
        "{transport: auto, url: 'http://x', prefix: -x}",
    ) + &target_doc(
        NS,
        "long",
        "",
        &format!(
            "{{transport: auto, url: 'http://x', prefix: {}}}",
            "a".repeat(33)
        ),
    ) + &http_target(NS, "under_score")
        + &http_target(NS, &"n".repeat(33))
        + &http_target(NS, "dotted.name")
        + &target_doc(
            NS,
            "max",
            "",
            &format!(
                "{{transport: auto, url: 'http://x', prefix: {}}}",
                "a".repeat(32)
            ),
        );
    let c = compile(&yaml);
    for name in ["explicit", "dash", "long", "under_score", &"n".repeat(33)] {
        let r = cond(&c, ObjectKind::Target, NS, name, ACCEPTED);
        assert_eq!(
            (r.status, r.reason.as_str()),
            (false, "InvalidPrefix"),
            "{name}"
        );
        assert!(c.snapshot.target(NS, name).is_none());
    }
    assert_eq!(&*target(&c, NS, "dotted.name").prefix, "dotted-name");
    assert_eq!(&*target(&c, NS, "max").prefix, "a".repeat(32));
    assert_eq!(c.snapshot.targets().len(), 2);
}

#[test]
fn duplicate_target_is_rejected() {
    let yaml =
        http_target(NS, "gh") + &target_doc(NS, "gh", "", "{transport: stdio, command: other}");
    let c = compile(&yaml);
    let reports: Vec<_> = c
        .reports
        .iter()
        .filter(|r| r.kind == ObjectKind::Target && r.name == "gh")
        .map(|r| {
            (
                r.is_true(ACCEPTED),
                r.condition(ACCEPTED).unwrap().reason.clone(),
            )
        })
        .collect();
    assert_eq!(
        reports,
        [
            (true, "Accepted".to_owned()),
            (false, "Duplicate".to_owned())
        ]
    );
    assert_eq!(c.snapshot.targets().len(), 1);
    assert_eq!(
        target(&c, NS, "gh").upstream.transport_name(),
        "streamableHttp",
        "the first one wins"
    );
}

#[test]
fn transport_fields_are_checked_without_cel() {
    // Standalone mode has no apiserver: the compiler enforces what the CEL rules would.
    let cases = [
        ("no-url", "{transport: streamableHttp}", "MissingURL"),
        ("sse-no-url", "{transport: sse}", "MissingURL"),
        ("bad-url", "{transport: auto, url: 'ftp://x'}", "InvalidURL"),
        ("no-command", "{transport: stdio}", "MissingCommand"),
        (
            "blank-command",
            "{transport: stdio, command: '  '}",
            "MissingCommand",
        ),
        ("no-pod", "{transport: kubernetes}", "MissingPod"),
        (
            "pod-not-object",
            "{transport: kubernetes, pod: {template: [1]}}",
            "InvalidPod",
        ),
        (
            "url-on-stdio",
            "{transport: stdio, command: x, url: 'http://x'}",
            "InvalidField",
        ),
        (
            "command-on-http",
            "{transport: auto, url: 'http://x', command: x}",
            "InvalidField",
        ),
        (
            "pod-on-stdio",
            "{transport: stdio, command: x, pod: {template: {}}}",
            "InvalidField",
        ),
        (
            "per-user-http",
            "{transport: auto, url: 'http://x', isolation: perUser}",
            "InvalidIsolation",
        ),
    ];
    let yaml: String = cases
        .iter()
        .map(|(n, spec, _)| target_doc(NS, n, "", spec))
        .collect::<String>()
        + &target_doc(
            NS,
            "ok-pod",
            "",
            "{transport: kubernetes, isolation: perUser, pod: {template: {spec: {}}}}",
        );
    let c = compile(&yaml);
    for (name, _, reason) in cases {
        let r = cond(&c, ObjectKind::Target, NS, name, ACCEPTED);
        assert_eq!(
            (r.status, r.reason.as_str()),
            (false, reason),
            "{name}: {}",
            r.message
        );
    }
    assert_eq!(c.snapshot.targets().len(), 1);
    let ok = target(&c, NS, "ok-pod");
    assert_eq!(ok.upstream.transport_name(), "kubernetes");
}

#[test]
fn label_selectors() {
    let t = |name: &str, labels: &str| {
        target_doc(NS, name, labels, "{transport: auto, url: 'http://x'}")
    };
    let p = |name: &str, selector: &str| {
        policy_doc(
            NS,
            name,
            &format!(
                "{{targetSelector: {selector}, subjects: [{{user: {name}}}], {}, effect: Allow}}",
                all_tool("'*'")
            ),
        )
    };
    let yaml = t("ext", "tier: external, team: a")
        + &t("int", "tier: internal")
        + &t("none", "")
        + &p(
            "in",
            "{matchExpressions: [{key: tier, operator: In, values: [external, internal]}]}",
        )
        + &p(
            "notin",
            "{matchExpressions: [{key: tier, operator: NotIn, values: [external]}]}",
        )
        + &p(
            "exists",
            "{matchExpressions: [{key: team, operator: Exists}]}",
        )
        + &p(
            "dne",
            "{matchExpressions: [{key: tier, operator: DoesNotExist}]}",
        )
        + &p("labels", "{matchLabels: {tier: internal}}")
        + &p(
            "both",
            "{matchLabels: {tier: external}, matchExpressions: [{key: team, operator: In, values: [b]}]}",
        )
        + &p("everything", "{}")
        + &p(
            "bogus",
            "{matchExpressions: [{key: tier, operator: Matches, values: [x]}]}",
        );
    let c = compile(&yaml);
    let selected = |policy: &str| -> Vec<&str> {
        ["ext", "int", "none"]
            .into_iter()
            .filter(|t| tool_allowed(&c, NS, t, &id(policy, &[], &[]), "x"))
            .collect()
    };
    assert_eq!(selected("in"), ["ext", "int"]);
    assert_eq!(
        selected("notin"),
        ["int", "none"],
        "NotIn matches a missing label"
    );
    assert_eq!(selected("exists"), ["ext"]);
    assert_eq!(selected("dne"), ["none"]);
    assert_eq!(selected("labels"), ["int"]);
    assert_eq!(selected("both"), Vec::<&str>::new());
    assert_eq!(selected("everything"), ["ext", "int", "none"]);
    let r = cond(&c, ObjectKind::Policy, NS, "in", RESOLVED_REFS);
    assert_eq!(r.message, "applies to 2 Target(s)");
    let r = cond(&c, ObjectKind::Policy, NS, "both", RESOLVED_REFS);
    assert_eq!((r.status, r.reason.as_str()), (false, "NoTargetsSelected"));

    assert_eq!(selected("bogus"), Vec::<&str>::new());
    let r = cond(&c, ObjectKind::Policy, NS, "bogus", ACCEPTED);
    assert!(!r.status);
    assert!(
        r.message
            .contains("unknown label selector operator \"Matches\""),
        "{}",
        r.message
    );
}

fn cred_case(extra_secret: &str, value_ref: &str) -> String {
    http_target(NS, "api")
        + &secret_doc(
            NS,
            "s",
            &[
                ("good", "v-good"),
                ("fallback", "v-fallback"),
                ("crlf", "a\r\nx-evil: 1"),
                ("lf", "a\nb"),
                ("nul", "a\u{0}b"),
            ],
        )
        + extra_secret
        + &credential_doc(
            NS,
            "fallback",
            "{targetRef: {name: api}, subject: {default: true}, headers: [{name: authorization, secretKeyRef: {name: s, key: fallback}}]}",
        )
        + &credential_doc(
            NS,
            "alice",
            &format!(
                "{{targetRef: {{name: api}}, subject: {{user: alice}}, headers: [{{name: x-ok, secretKeyRef: {{name: s, key: good}}}}, {{name: authorization, secretKeyRef: {value_ref}}}]}}"
            ),
        )
}

#[test]
fn unresolvable_secret_values_leave_the_credential_out() {
    let binary = "apiVersion: v1\nkind: Secret\nmetadata: {name: bin, namespace: team}\ndata: {k: /w==}\n---\n";
    let cases = [
        ("{name: missing, key: good}", "SecretNotFound"),
        ("{name: s, key: missing}", "SecretKeyNotFound"),
        ("{name: bin, key: k}", "InvalidSecretValue"),
        ("{name: s, key: crlf}", "InvalidSecretValue"),
        ("{name: s, key: lf}", "InvalidSecretValue"),
        ("{name: s, key: nul}", "InvalidSecretValue"),
    ];
    let k = key();
    let alice = id("alice", &[], &[]);
    for (value_ref, reason) in cases {
        let c = compile(&cred_case(binary, value_ref));
        let r = cond(&c, ObjectKind::Credential, NS, "alice", RESOLVED_REFS);
        assert_eq!(
            (r.status, r.reason.as_str()),
            (false, reason),
            "{value_ref}: {}",
            r.message
        );
        assert!(cond(&c, ObjectKind::Credential, NS, "alice", ACCEPTED).status);
        // Not injected at all: not even its good header (never a partial set); alice falls back
        // to the default.
        assert_eq!(
            injected(&c, &k, NS, "api", &alice),
            [("header:authorization".to_owned(), "v-fallback".to_owned())].into(),
            "{value_ref}"
        );
        assert_eq!(target(&c, NS, "api").credentials.all().len(), 1);
        assert!(
            !r.message.contains("x-evil") && !r.message.contains("v-good"),
            "{}",
            r.message
        );
    }
    // Control: the same Credential with a good value is injected.
    let c = compile(&cred_case(binary, "{name: s, key: good}"));
    assert!(cond(&c, ObjectKind::Credential, NS, "alice", RESOLVED_REFS).status);
    assert_eq!(injected(&c, &k, NS, "api", &alice)["header:x-ok"], "v-good");
    assert_eq!(
        injected(&c, &k, NS, "api", &alice)["header:authorization"],
        "v-good"
    );
}

#[test]
fn env_values_may_span_lines_but_not_hold_nul() {
    // CR/LF is only a header-injection risk; env values (e.g. a PEM key) may span lines.
    let yaml = target_doc(NS, "srv", "", "{transport: stdio, command: srv}")
        + "apiVersion: v1\nkind: Secret\nmetadata: {name: b64, namespace: team}\ndata: {k: aGVsbG8=}\nstringData: {s: \"l1\\nl2\"}\n---\n"
        + &credential_doc(
            NS,
            "c",
            "{targetRef: {name: srv}, subject: {default: true}, env: [{name: PEM, secretKeyRef: {name: b64, key: s}}, {name: FROM_DATA, prefix: 'x-', secretKeyRef: {name: b64, key: k}}]}",
        );
    let c = compile(&yaml);
    assert!(cond(&c, ObjectKind::Credential, NS, "c", RESOLVED_REFS).status);
    let got = injected(&c, &key(), NS, "srv", &id("a", &[], &[]));
    assert_eq!(got["env:PEM"], "l1\nl2");
    assert_eq!(
        got["env:FROM_DATA"], "x-hello",
        "base64 data is decoded, prefix prepended"
    );

    // NUL cannot be passed in an environment: the Credential is not resolved.
    let yaml = target_doc(NS, "srv", "", "{transport: stdio, command: srv}")
        + &secret_doc(NS, "s", &[("k", "a\u{0}b")])
        + &credential_doc(
            NS,
            "c",
            "{targetRef: {name: srv}, subject: {default: true}, env: [{name: T, secretKeyRef: {name: s, key: k}}]}",
        );
    let c = compile(&yaml);
    let r = cond(&c, ObjectKind::Credential, NS, "c", RESOLVED_REFS);
    assert_eq!(
        (r.status, r.reason.as_str()),
        (false, "InvalidSecretValue"),
        "{}",
        r.message
    );
    assert!(target(&c, NS, "srv").credentials.is_empty());
}

#[test]
fn invalid_credentials_are_rejected() {
    let cases = [
        (
            "dup-header",
            "headers: [{name: Authorization, secretKeyRef: {name: s, key: k}}, {name: authorization, secretKeyRef: {name: s, key: k}}]",
            "listed twice",
        ),
        (
            "dup-env",
            "env: [{name: TOKEN, secretKeyRef: {name: s, key: k}}, {name: TOKEN, secretKeyRef: {name: s, key: k}}]",
            "listed twice",
        ),
        (
            "host",
            "headers: [{name: Host, secretKeyRef: {name: s, key: k}}]",
            "cannot be injected",
        ),
        (
            "te",
            "headers: [{name: te, secretKeyRef: {name: s, key: k}}]",
            "cannot be injected",
        ),
        (
            "bad-header",
            "headers: [{name: 'a b', secretKeyRef: {name: s, key: k}}]",
            "not a valid HTTP token",
        ),
        (
            "bad-env",
            "env: [{name: 1TOKEN, secretKeyRef: {name: s, key: k}}]",
            "must match",
        ),
        ("empty", "headers: []", "at least one header or env var"),
    ];
    let mut yaml = http_target(NS, "api") + &secret_doc(NS, "s", &[("k", "v")]);
    for (name, body, _) in cases {
        yaml += &credential_doc(
            NS,
            name,
            &format!("{{targetRef: {{name: api}}, subject: {{user: u}}, {body}}}"),
        );
    }
    yaml += &credential_doc(
        NS,
        "two-subjects",
        "{targetRef: {name: api}, subject: {user: u, default: true}, env: [{name: T, secretKeyRef: {name: s, key: k}}]}",
    );
    yaml += &credential_doc(
        NS,
        "no-subject",
        "{targetRef: {name: api}, subject: {default: false}, env: [{name: T, secretKeyRef: {name: s, key: k}}]}",
    );
    let c = compile(&yaml);
    for (name, _, msg) in cases {
        let r = cond(&c, ObjectKind::Credential, NS, name, ACCEPTED);
        assert!(!r.status, "{name} accepted");
        assert!(r.message.contains(msg), "{name}: {}", r.message);
    }
    for name in ["two-subjects", "no-subject"] {
        let r = cond(&c, ObjectKind::Credential, NS, name, ACCEPTED);
        assert!(
            !r.status && r.message.contains("exactly one"),
            "{name}: {r:?}"
        );
    }
    assert!(target(&c, NS, "api").credentials.is_empty());
    assert!(injected(&c, &key(), NS, "api", &id("u", &[], &[])).is_empty());
}

#[test]
fn invalid_policies_are_rejected() {
    let cases = [
        (
            "no-target",
            "{subjects: [{user: a}], rules: [{names: ['*']}], effect: Allow}",
        ),
        (
            "both-targets",
            "{targetRef: {name: api}, targetSelector: {}, subjects: [{user: a}], rules: [{names: ['*']}], effect: Allow}",
        ),
        (
            "no-subjects",
            "{targetRef: {name: api}, subjects: [], rules: [{names: ['*']}], effect: Allow}",
        ),
        (
            "two-field-subject",
            "{targetRef: {name: api}, subjects: [{user: a, role: b}], rules: [{names: ['*']}], effect: Allow}",
        ),
        (
            "empty-subject",
            "{targetRef: {name: api}, subjects: [{user: ''}], rules: [{names: ['*']}], effect: Allow}",
        ),
        (
            "no-rules",
            "{targetRef: {name: api}, subjects: [{user: a}], rules: [], effect: Allow}",
        ),
        (
            "no-names",
            "{targetRef: {name: api}, subjects: [{user: a}], rules: [{names: []}], effect: Allow}",
        ),
        (
            "priority",
            "{targetRef: {name: api}, subjects: [{user: a}], rules: [{names: ['*']}], effect: Allow, priority: 1001}",
        ),
    ];
    let mut yaml = http_target(NS, "api");
    for (name, spec) in cases {
        yaml += &policy_doc(NS, name, spec);
    }
    let c = compile(&yaml);
    for (name, _) in cases {
        let r = cond(&c, ObjectKind::Policy, NS, name, ACCEPTED);
        assert_eq!((r.status, r.reason.as_str()), (false, "Invalid"), "{name}");
    }
    assert!(target(&c, NS, "api").policy.rules().is_empty());
    assert!(!tool_allowed(&c, NS, "api", &id("a", &[], &[]), "x"));
}

#[test]
fn one_bad_object_is_rejected_alone_the_rest_still_compiles() {
    let yaml = http_target(NS, "good")
        + &target_doc(NS, "bad", "", "{transport: stdio}")
        + &secret_doc(NS, "s", &[("k", "v-good")])
        + &policy_doc(
            NS,
            "good-policy",
            &format!(
                "{{targetRef: {{name: good}}, subjects: [{{group: dev}}], {}, effect: Allow}}",
                all_tool("'get_*'")
            ),
        )
        + &policy_doc(
            NS,
            "bad-policy",
            &format!(
                "{{targetRef: {{name: good}}, subjects: [{{group: dev}}], {}, effect: Allow}}",
                all_tool("'x['")
            ),
        )
        + &policy_doc(
            NS,
            "policy-for-bad-target",
            &format!(
                "{{targetRef: {{name: bad}}, subjects: [{{group: dev}}], {}, effect: Allow}}",
                all_tool("'*'")
            ),
        )
        + &credential_doc(
            NS,
            "good-cred",
            "{targetRef: {name: good}, subject: {group: dev}, headers: [{name: x-token, secretKeyRef: {name: s, key: k}}]}",
        )
        + &credential_doc(
            NS,
            "bad-cred",
            "{targetRef: {name: good}, subject: {user: a}, headers: [{name: x-token, secretKeyRef: {name: nope, key: k}}]}",
        );
    let c = compile(&yaml);
    let dev = id("bob", &["dev"], &[]);
    assert_eq!(c.snapshot.targets().len(), 1);
    assert!(tool_allowed(&c, NS, "good", &dev, "get_x"));
    assert_eq!(
        injected(&c, &key(), NS, "good", &dev)["header:x-token"],
        "v-good"
    );

    let mut problems: Vec<(ObjectKind, &str)> =
        c.problems().map(|r| (r.kind, r.name.as_str())).collect();
    problems.sort();
    assert_eq!(
        problems,
        [
            (ObjectKind::Target, "bad"),
            (ObjectKind::Policy, "bad-policy"),
            (ObjectKind::Policy, "policy-for-bad-target"),
            (ObjectKind::Credential, "bad-cred"),
        ]
    );
    for (kind, name) in [
        (ObjectKind::Target, "good"),
        (ObjectKind::Policy, "good-policy"),
        (ObjectKind::Credential, "good-cred"),
    ] {
        let r = c.report(kind, NS, name).unwrap();
        assert!(r.is_true(ACCEPTED) && r.is_true(RESOLVED_REFS), "{r:?}");
    }
    // Every input object got exactly one report.
    assert_eq!(c.reports.len(), 2 + 3 + 2);
}

// ---- snapshot integrity ------------------------------------------------------------------------

fn integrity_yaml(alice_token: &str) -> String {
    target_doc(
        NS,
        "gh",
        "",
        "{transport: stdio, command: gh, isolation: perUser}",
    ) + &secret_doc(
        NS,
        "tokens",
        &[
            ("alice", alice_token),
            ("bob", "tok-bob"),
            ("team", "tok-team"),
        ],
    ) + &policy_doc(
        NS,
        "dev",
        &format!(
            "{{targetRef: {{name: gh}}, subjects: [{{group: dev}}], {}, effect: Allow}}",
            all_tool("'get_*'")
        ),
    ) + &credential_doc(
        NS,
        "alice",
        "{targetRef: {name: gh}, subject: {user: alice}, env: [{name: TOKEN, secretKeyRef: {name: tokens, key: alice}}]}",
    ) + &credential_doc(
        NS,
        "bob",
        "{targetRef: {name: gh}, subject: {user: bob}, env: [{name: TOKEN, secretKeyRef: {name: tokens, key: bob}}]}",
    ) + &credential_doc(
        NS,
        "team",
        "{targetRef: {name: gh}, subject: {group: platform}, env: [{name: TOKEN, secretKeyRef: {name: tokens, key: team}}]}",
    )
}

#[test]
fn snapshot_hash_is_stable_across_recompiles_and_tracks_secret_values() {
    let yaml = integrity_yaml("tok-alice");
    let a = compile(&yaml);
    let b = compile(&yaml);
    // Sealing used fresh random nonces...
    let sealed = |c: &reflow_crds::Compiled| {
        target(c, NS, "gh").credentials.all()[0].entries[0]
            .value
            .sealed
            .clone()
    };
    assert_ne!(sealed(&a), sealed(&b), "nonces are random");
    // ...yet the content hash is the same.
    assert_eq!(a.snapshot.hash(), b.snapshot.hash());
    assert_eq!(a.snapshot.hash().len(), 64);
    assert_eq!(a.snapshot.normalized(), b.snapshot.normalized());

    // A changed secret value changes the hash; so does a policy edit.
    let c = compile(&integrity_yaml("tok-alice-rotated"));
    assert_ne!(a.snapshot.hash(), c.snapshot.hash());
    let d = compile(&yaml.replace("'get_*'", "'get_*', 'list_*'"));
    assert_ne!(a.snapshot.hash(), d.snapshot.hash());
    // A different sealing key changes the digests, hence the hash.
    let e = compile_with(&inputs(&yaml), &SealingKey::from_bytes(&[9; 32]));
    assert_ne!(a.snapshot.hash(), e.snapshot.hash());
    // The version is not content.
    assert_eq!(a.snapshot.with_version(7).hash(), a.snapshot.hash());
    assert_eq!(a.snapshot.with_version(7).version(), 7);
}

#[test]
fn snapshot_round_trips_through_json() {
    let k = key();
    let c = compile(&integrity_yaml("tok-alice"));
    let snap = c.snapshot.with_version(42);
    let json = snap.to_json().unwrap();
    let back: Snapshot = serde_json::from_slice(&json).expect("a valid snapshot deserializes");
    assert_eq!(back, snap);
    assert_eq!(back.version(), 42);
    assert_eq!(back.hash(), snap.hash());
    assert_eq!(back.targets(), snap.targets());
    assert_eq!(back.to_json().unwrap(), json, "stable serialization");
    // The rebuilt index decides the same, and the sealed values still open.
    let back_c = reflow_crds::Compiled {
        snapshot: back,
        reports: Vec::new(),
    };
    let dev = id("alice", &["dev"], &[]);
    assert!(tool_allowed(&back_c, NS, "gh", &dev, "get_x"));
    assert!(!tool_allowed(&back_c, NS, "gh", &dev, "delete_x"));
    assert_eq!(
        injected(&back_c, &k, NS, "gh", &dev)["env:TOKEN"],
        "tok-alice"
    );
    assert_eq!(
        back_c.snapshot.target_by_prefix("gh").map(|t| t.key()),
        Some("team/gh".to_owned())
    );
}

#[test]
fn tampered_snapshot_is_refused() {
    let c = compile(&integrity_yaml("tok-alice"));
    let json = c.snapshot.to_json().unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["targets"][0]["policy"][0]["policy"], "dev");
    v["targets"][0]["policy"][0]["policy"] = "evil".into();
    let err = serde_json::from_slice::<Snapshot>(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("content hash mismatch"), "{err}");

    // Widening a pattern is refused the same way.
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["targets"][0]["policy"][0]["names"][0] = "*".into();
    let err = serde_json::from_slice::<Snapshot>(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("content hash mismatch"), "{err}");

    // A claimed hash that does not match, with the content untouched.
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["hash"] = "0".repeat(64).into();
    assert!(serde_json::from_slice::<Snapshot>(&serde_json::to_vec(&v).unwrap()).is_err());
}

#[test]
fn sealed_value_moved_to_another_slot_does_not_open() {
    let k = key();
    let c = compile(&integrity_yaml("tok-alice"));
    let creds = target(&c, NS, "gh").credentials.all();
    let entry = |cred: &str| {
        creds
            .iter()
            .find(|c| &*c.credential == cred)
            .unwrap()
            .entries[0]
            .clone()
    };
    let (alice, bob) = (entry("alice"), entry("bob"));
    assert_ne!(alice.aad, bob.aad);
    assert!(
        alice.aad.contains("user:alice") && alice.aad.contains("/team/gh/"),
        "{}",
        alice.aad
    );
    assert!(k.open(&alice.aad, &alice.value).is_ok());
    assert!(
        k.open(&bob.aad, &alice.value).is_err(),
        "alice's token must not open as bob's"
    );

    // Moving the ciphertext inside the snapshot JSON (the hash does not cover ciphertexts) gives
    // a snapshot whose moved value refuses to open.
    let mut v: serde_json::Value = serde_json::from_slice(&c.snapshot.to_json().unwrap()).unwrap();
    let list = v["targets"][0]["credentials"].as_array_mut().unwrap();
    let pos =
        |l: &Vec<serde_json::Value>, n: &str| l.iter().position(|c| c["credential"] == n).unwrap();
    let (ia, ib) = (pos(list, "alice"), pos(list, "bob"));
    let alice_sealed = list[ia]["entries"][0]["value"]["sealed"].clone();
    list[ib]["entries"][0]["value"]["sealed"] = alice_sealed;
    let moved: Snapshot = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
    let moved_c = reflow_crds::Compiled {
        snapshot: moved,
        reports: Vec::new(),
    };
    let resolved = target(&moved_c, NS, "gh")
        .credentials
        .resolve(&id("bob", &[], &[]));
    assert_eq!(resolved.entries.len(), 1);
    let e = &resolved.entries[0].entry;
    assert!(k.open(&e.aad, &e.value).is_err());
    // And with the wrong key nothing opens.
    assert!(
        SealingKey::from_bytes(&[1; 32])
            .open(&alice.aad, &alice.value)
            .is_err()
    );
}

#[test]
fn resolved_credentials_fingerprint() {
    let c = compile(&integrity_yaml("tok-alice"));
    let creds = &target(&c, NS, "gh").credentials;
    let fp = |who| creds.resolve(&who).fingerprint;
    let alice = fp(id("alice", &["dev"], &[]));
    let bob = fp(id("bob", &["dev"], &[]));
    assert_ne!(alice, bob);
    // Same resolved values → same fingerprint, whatever else differs about the callers.
    assert_eq!(
        fp(id("p1", &["platform"], &[])),
        fp(id("p2", &["platform", "dev"], &["x"]))
    );
    assert_eq!(fp(id("n1", &[], &[])), fp(id("n2", &["dev"], &[])));
    assert_ne!(fp(id("p1", &["platform"], &[])), fp(id("n1", &[], &[])));
    // Alice's own token beats her group's.
    assert_eq!(alice, fp(id("alice", &["platform"], &[])));
    // Stable across recompiles (digests are keyed, nonces are not involved)...
    let again = compile(&integrity_yaml("tok-alice"));
    assert_eq!(
        target(&again, NS, "gh")
            .credentials
            .resolve(&id("alice", &[], &[]))
            .fingerprint,
        alice
    );
    // ...and changes when the value does: the process started with the old token is not reused.
    let rotated = compile(&integrity_yaml("tok-alice-2"));
    assert_ne!(
        target(&rotated, NS, "gh")
            .credentials
            .resolve(&id("alice", &[], &[]))
            .fingerprint,
        alice
    );
    assert_eq!(
        target(&rotated, NS, "gh")
            .credentials
            .resolve(&id("bob", &[], &[]))
            .fingerprint,
        bob
    );
}

// ---- token revocations ------------------------------------------------------------------------

#[test]
fn token_revocations_compile_into_the_snapshot_and_change_its_hash() {
    let base = http_target(NS, "gh");
    let without = compile(&base);
    assert!(without.snapshot.revocations().is_empty());
    let revoke = "---\napiVersion: mcp.reflow.io/v1alpha1\nkind: TokenRevocation\nmetadata: {name: lost-laptop}\nspec:\n  tokenIds: [j-1, j-2]\n  subjects: [{user: bob, issuedBefore: '2026-11-22T10:00:00Z'}]\n  reason: laptop stolen\n---\napiVersion: mcp.reflow.io/v1alpha1\nkind: TokenRevocation\nmetadata: {name: empty}\nspec: {}\n";
    let with = compile(&(base.clone() + revoke));
    let r = with.snapshot.revocations();
    assert!(r.revokes(Some("j-2"), "alice", Some(1)));
    let cutoff = 1_795_341_600; // 2026-11-22T10:00:00Z
    assert!(r.revokes(Some("x"), "bob", Some(cutoff - 1)));
    assert!(!r.revokes(Some("x"), "bob", Some(cutoff)));
    assert!(!r.revokes(Some("x"), "alice", Some(1)));
    assert_ne!(with.snapshot.hash(), without.snapshot.hash());

    let ok = with
        .report(ObjectKind::TokenRevocation, "", "lost-laptop")
        .unwrap();
    assert!(ok.is_true(ACCEPTED));
    let bad = with
        .report(ObjectKind::TokenRevocation, "", "empty")
        .unwrap();
    let accepted = bad.condition(ACCEPTED).unwrap();
    assert_eq!(
        (accepted.status, accepted.reason.as_str()),
        (false, "Invalid")
    );

    // Revocations survive the wire, and a tampered list is refused by the hash check.
    let json = with.snapshot.to_json().unwrap();
    let back: Snapshot = serde_json::from_slice(&json).unwrap();
    assert_eq!(back.revocations(), with.snapshot.revocations());
    let tampered = String::from_utf8(json).unwrap().replace("j-2", "j-3");
    assert!(serde_json::from_str::<Snapshot>(&tampered).is_err());
}
