//! Budgets from DESIGN §7: compiling 1,000 Targets + 10,000 Policies (+ 1,000 Credentials with
//! their Secrets) in ≤ 500 ms, and one policy decision in ≤ 1 µs with 10,000 policies — both for
//! a Target carrying a realistic share of them and for the worst case where all 10,000 sit on one
//! Target. Issue #22: a decision whose deciding rule carries a CEL condition (≤ 5 µs, same
//! 10,000 policies), and the rate-limit hot path (finding the limits and charging the bucket).
//! Run with `cargo bench -p reflow-crds` (or `make bench`); the figures are printed against the
//! budgets at the end.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use k8s_openapi::api::core::v1::Secret;
use reflow_crds::api::{Credential, Policy, Target};
use reflow_crds::rate_limiter::RateLimiter;
use reflow_crds::snapshot::RuleKind;
use reflow_crds::snapshot::condition::Request;
use reflow_crds::snapshot::{CompiledRule, CompiledTarget, SubjectMatch};
use reflow_crds::{Decision, Identity, Inputs, ItemKind, SealingKey, compile};
use serde_json::json;
use std::sync::Arc;

const TARGETS: usize = 1_000;
const POLICIES: usize = 10_000;
const CREDENTIALS: usize = 1_000;
const NAMESPACES: usize = 10;
const USERS: u64 = 1_000;
const GROUPS: u64 = 100;
const ROLES: u64 = 20;
const VERBS: [&str; 10] = [
    "get", "list", "create", "update", "delete", "search", "run", "read", "write", "close",
];
const AREAS: u64 = 40;

/// Deterministic xorshift, so every run benches the same model.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn ns(i: usize) -> String {
    format!("team-{}", i % NAMESPACES)
}

fn target(i: usize) -> Target {
    let spec = match i % 10 {
        0..=5 => json!({"transport": "streamableHttp", "url": format!("http://t{i}.svc/mcp")}),
        6..=8 => {
            json!({"transport": "stdio", "command": "server", "args": ["--id", i.to_string()], "isolation": "perUser"})
        }
        _ => {
            json!({"transport": "kubernetes", "isolation": "perGroup", "pod": {"template": {"spec": {"containers": [{"name": "s", "image": "img"}]}}}})
        }
    };
    serde_json::from_value(json!({
        "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Target",
        "metadata": {"name": format!("t{i}"), "namespace": ns(i), "labels": {"tier": format!("tier{}", (i / NAMESPACES) % 10)}},
        "spec": spec,
    }))
    .unwrap()
}

fn subject(r: &mut Rng) -> serde_json::Value {
    match r.below(100) {
        0..=39 => json!({"user": format!("u{}", r.below(USERS))}),
        40..=69 => json!({"group": format!("g{}", r.below(GROUPS))}),
        70..=94 => json!({"role": format!("r{}", r.below(ROLES))}),
        _ => json!({"everyone": true}),
    }
}

fn pattern(r: &mut Rng) -> String {
    let area = r.below(AREAS);
    let verb = VERBS[r.below(VERBS.len() as u64) as usize];
    // Exact names, prefix globs, suffix globs, classes and infix globs; no catch-all `*`, so
    // an unknown name really falls through to default deny.
    match r.below(100) {
        0..=49 => format!("{area:02}_{verb}_item"),
        50..=74 => format!("{area:02}_{verb}_*"),
        75..=89 => format!("*_{verb}_item"),
        90..=96 => format!("{area:02}_[a-m]*"),
        _ => format!("*_{verb}_*"),
    }
}

/// `on_target`: Some(i) puts every Policy on Target i; None spreads them (5 % by label selector).
fn policy(i: usize, r: &mut Rng, on_target: Option<usize>) -> Policy {
    let t = on_target.unwrap_or_else(|| r.below(TARGETS as u64) as usize);
    let selector = on_target.is_none() && r.chance(5);
    let (namespace, target) = if selector {
        (
            ns(t),
            json!({"targetSelector": {"matchLabels": {"tier": format!("tier{}", r.below(10))}}}),
        )
    } else {
        (ns(t), json!({"targetRef": {"name": format!("t{t}")}}))
    };
    let subjects: Vec<_> = (0..1 + r.below(2)).map(|_| subject(r)).collect();
    let rules: Vec<_> = (0..1 + r.below(3))
        .map(|_| {
            let kind = ["tool", "tool", "tool", "resource", "prompt", "all"][r.below(6) as usize];
            let names: Vec<_> = (0..1 + r.below(4)).map(|_| pattern(r)).collect();
            json!({"kind": kind, "names": names})
        })
        .collect();
    let mut spec = json!({
        "subjects": subjects,
        "rules": rules,
        "effect": if r.chance(20) { "Deny" } else { "Allow" },
        "priority": r.below(21) as i64 - 10,
    });
    spec.as_object_mut()
        .unwrap()
        .extend(target.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Policy",
        "metadata": {"name": format!("p{i}"), "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}

fn credential(i: usize, r: &mut Rng) -> (Credential, Secret) {
    let t = r.below(TARGETS as u64) as usize;
    let subject = match r.below(4) {
        0 => json!({"user": format!("u{}", r.below(USERS))}),
        1 => json!({"group": format!("g{}", r.below(GROUPS))}),
        2 => json!({"role": format!("r{}", r.below(ROLES))}),
        _ => json!({"default": true}),
    };
    let value = json!([{"name": if t % 10 < 6 { "authorization" } else { "TOKEN" }, "secretKeyRef": {"name": format!("s{i}"), "key": "token"}}]);
    let field = if t % 10 < 6 { "headers" } else { "env" };
    let cred = serde_json::from_value(json!({
        "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Credential",
        "metadata": {"name": format!("c{i}"), "namespace": ns(t)},
        "spec": {"targetRef": {"name": format!("t{t}")}, "subject": subject, field: value},
    }))
    .unwrap();
    let secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("s{i}"), "namespace": ns(t)},
        "stringData": {"token": format!("secret-value-{i}-{}", r.next())},
    }))
    .unwrap();
    (cred, secret)
}

fn inputs(on_target: Option<usize>) -> Inputs {
    let mut r = Rng(0x2545_F491_4F6C_DD1D);
    let targets = match on_target {
        Some(t) => vec![target(t)],
        None => (0..TARGETS).map(target).collect(),
    };
    let policies = (0..POLICIES)
        .map(|i| policy(i, &mut r, on_target))
        .collect();
    let (credentials, secrets) = match on_target {
        Some(_) => (Vec::new(), Vec::new()),
        None => (0..CREDENTIALS).map(|i| credential(i, &mut r)).unzip(),
    };
    Inputs {
        targets,
        policies,
        credentials,
        secrets,
        ..Inputs::default()
    }
}

/// A caller with a typical claim set: one user, three groups, one role.
fn caller() -> Identity {
    Identity::new("u17", ["g3", "g42", "g77"], ["r5"])
}

/// For a target, a caller one of its tool rules applies to, and a name that rule matches.
fn caller_for(t: &CompiledTarget) -> (Identity, String) {
    let rule = t
        .policy
        .rules()
        .iter()
        .find(|r| matches!(r.kind, RuleKind::Tool | RuleKind::All))
        .expect("the typical target has a tool rule");
    let name = rule.names[0]
        .as_str()
        .replace("[a-m]", "a")
        .replace('*', "x");
    let (mut user, mut groups, mut roles) =
        ("u17".to_owned(), vec!["g3", "g42", "g77"], vec!["r5"]);
    match &rule.subject {
        SubjectMatch::User(u) => user = u.to_string(),
        SubjectMatch::Group(g) => groups[0] = g,
        SubjectMatch::Role(r) => roles[0] = r,
        SubjectMatch::Everyone => {}
    }
    (Identity::new(user, groups, roles), name)
}

/// The caller of the condition benchmarks: a user with groups and a role, like `caller()`.
fn who_for_bench() -> Identity {
    caller()
}

/// Per benchmark, the mean time per iteration of every sample (warm-up runs included).
static RESULTS: Mutex<BTreeMap<&'static str, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Runs `f` under criterion and records each sample's mean time per iteration. With
/// `keep`, outputs are dropped after the clock stops (a compiled snapshot is large, and freeing
/// the previous one is not part of compiling the next).
fn bench<O>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &'static str,
    keep: bool,
    mut f: impl FnMut() -> O,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut kept = Vec::with_capacity(if keep { iters as usize } else { 0 });
            let start = Instant::now();
            for _ in 0..iters {
                let out = black_box(f());
                if keep {
                    kept.push(out);
                }
            }
            let elapsed = start.elapsed();
            drop(kept);
            let per = elapsed.as_secs_f64() / iters as f64;
            RESULTS.lock().unwrap().entry(name).or_default().push(per);
            elapsed
        })
    });
}

fn main() {
    let key = SealingKey::from_bytes(&[7; 32]);
    let spread = inputs(None);
    let piled = inputs(Some(0));
    let compiled = compile(&spread, &key).unwrap();
    assert_eq!(compiled.snapshot.targets().len(), TARGETS);
    let rejected = compiled
        .reports
        .iter()
        .filter(|r| !r.is_true(reflow_crds::compile::ACCEPTED))
        .count();
    assert_eq!(rejected, 0, "the generated objects are all valid");
    let worst = compile(&piled, &key).unwrap();
    // The worst case plus the first example: 10,001 policies on one Target, the
    // conditional one the strongest, so its condition is evaluated on every decision.
    let mut conditional = piled.clone();
    conditional.policies.push(
        serde_json::from_value(json!({
            "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "acme-repos", "namespace": ns(0)},
            "spec": {"targetRef": {"name": "t0"}, "subjects": [{"everyone": true}],
                     "effect": "Allow", "priority": 1000,
                     "rules": [{"kind": "tool", "names": ["github_create_issue"],
                                "when": "args.repo.startsWith(\"acme/\")"}],
                     "rateLimit": {"requests": 1000000, "interval": "1s"}}
        }))
        .unwrap(),
    );
    let cond_t = compile(&conditional, &key).unwrap().snapshot.targets()[0].clone();
    let args = json!({"repo": "acme/web", "title": "a bug", "body": "steps to reproduce"});
    let cond_req = Request {
        kind: ItemKind::Tool,
        name: "github_create_issue",
        target: "t0",
        args: Some(&args),
        now: 1_800_000_000,
    };
    let d = cond_t.policy.decide_request(&who_for_bench(), &cond_req);
    assert!(
        d.allowed && d.policy.as_deref() == Some("acme-repos"),
        "{d:?}"
    );
    let limiter = RateLimiter::default();
    let target_key: Arc<str> = Arc::from("ns0/t0");

    // The realistic target: the one with the median number of rules. The caller there is given
    // the subject of one of its tool rules, and `hit` a name that rule matches.
    let mut by_rules: Vec<_> = compiled
        .snapshot
        .targets()
        .iter()
        .map(|t| (t.policy.rules().len(), t.clone()))
        .collect();
    by_rules.sort_by_key(|(n, t)| (*n, t.key()));
    let typical = by_rules[by_rules.len() / 2].1.clone();
    let worst_t = worst.snapshot.targets()[0].clone();
    let (typical_who, typical_hit) = caller_for(&typical);
    let who = caller();
    // A name some rule decides, and one that falls through to default deny (every candidate
    // pattern examined).
    let hit = "07_get_item";
    let miss = "99_unknown_tool";
    let applies = |r: &CompiledRule, id: &Identity| match &r.subject {
        SubjectMatch::User(u) => **u == *id.user,
        SubjectMatch::Group(g) => id.in_group(g),
        SubjectMatch::Role(x) => id.has_role(x),
        SubjectMatch::Everyone => true,
    };
    println!(
        "model: {TARGETS} targets, {POLICIES} policies, {CREDENTIALS} credentials\n  typical target {}: {} rules, {} for the caller\n  worst-case target (all {POLICIES} policies): {} rules, {} for the caller",
        typical.key(),
        typical.policy.rules().len(),
        typical
            .policy
            .rules()
            .iter()
            .filter(|r| applies(r, &typical_who))
            .count(),
        worst_t.policy.rules().len(),
        worst_t
            .policy
            .rules()
            .iter()
            .filter(|r| applies(r, &who))
            .count(),
    );
    println!(
        "  typical: {typical_hit} -> {:?}, {miss} -> {:?}\n  worst:   {hit} -> {:?}, {miss} -> {:?}",
        typical
            .policy
            .decide(&typical_who, ItemKind::Tool, &typical_hit),
        typical.policy.decide(&typical_who, ItemKind::Tool, miss),
        worst_t.policy.decide(&who, ItemKind::Tool, hit),
        worst_t.policy.decide(&who, ItemKind::Tool, miss),
    );
    assert!(
        typical
            .policy
            .decide(&typical_who, ItemKind::Tool, &typical_hit)
            .policy
            .is_some()
            && worst_t
                .policy
                .decide(&who, ItemKind::Tool, hit)
                .policy
                .is_some(),
        "the `hit` names are decided by a rule"
    );
    assert_eq!(
        (
            typical.policy.decide(&typical_who, ItemKind::Tool, miss),
            worst_t.policy.decide(&who, ItemKind::Tool, miss)
        ),
        (Decision::DEFAULT_DENY, Decision::DEFAULT_DENY),
        "the `miss` name falls through to default deny"
    );

    println!(
        "  condition: {} policies on t0, acme-repos (priority 1000, when: args.repo.startsWith(\"acme/\"))",
        cond_t.policy.rules().len()
    );

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    let mut g = c.benchmark_group("compile");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    bench(
        &mut g,
        "compile 1k targets + 10k policies + 1k credentials",
        true,
        || compile(&spread, &key).unwrap(),
    );
    g.finish();
    let mut g = c.benchmark_group("decide");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    bench(
        &mut g,
        "typical target, allowed-or-denied name",
        false,
        || {
            typical
                .policy
                .decide(&typical_who, ItemKind::Tool, black_box(&typical_hit))
        },
    );
    bench(&mut g, "typical target, default-deny name", false, || {
        typical
            .policy
            .decide(&typical_who, ItemKind::Tool, black_box(miss))
    });
    bench(
        &mut g,
        "10k policies on one target, allowed-or-denied name",
        false,
        || worst_t.policy.decide(&who, ItemKind::Tool, black_box(hit)),
    );
    bench(
        &mut g,
        "10k policies on one target, default-deny name",
        false,
        || worst_t.policy.decide(&who, ItemKind::Tool, black_box(miss)),
    );
    let bench_who = who_for_bench();
    bench(
        &mut g,
        "10k policies + a condition on args, evaluated",
        false,
        || {
            cond_t
                .policy
                .decide_request(&bench_who, black_box(&cond_req))
        },
    );
    bench(
        &mut g,
        "rate limit: find the limits and take a token",
        false,
        || {
            let view = cond_t.policy.view(&bench_who);
            let limits = view.rate_limits(black_box(&cond_req));
            limiter.check(&target_key, &bench_who.user, cond_req.name, &limits)
        },
    );
    g.finish();
    c.final_summary();

    println!("\nDESIGN §7 budgets (median of the per-sample means; best sample in brackets):");
    let results = RESULTS.lock().unwrap();
    let mut over = false;
    for (name, samples) in results.iter() {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let (median, best) = (sorted[sorted.len() / 2], sorted[0]);
        let (budget, unit, scale) = if name.starts_with("compile") {
            (500e-3, "ms", 1e3)
        } else if name.contains("condition") || name.starts_with("rate limit") {
            (5e-6, "ns", 1e9)
        } else {
            (1e-6, "ns", 1e9)
        };
        let ok = median <= budget;
        over |= !ok;
        println!(
            "  {:<52} {:>8.1} {unit} [{:>8.1}]  budget {:>4.0} {unit}  {}",
            name,
            median * scale,
            best * scale,
            budget * scale,
            if ok { "ok" } else { "OVER BUDGET" }
        );
    }
    if over {
        println!("  at least one figure is over budget");
    }
}
