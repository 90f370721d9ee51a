//! The controller on a real API server (issue #18), when `../shared/kube/cluster.sh` is beside
//! the checkout (CI), else skipped with the reason printed. One cluster for the whole file, in
//! `target/kube-test/deploy-cluster`, stopped at the end: CRDs apply without warnings, samples get
//! their conditions (Programmed by a controller-fed dataplane, which a Policy edit reaches within
//! 1 s), a Failed MCPInstance's status stays quiet, an instance's children come and
//! go with it, Targets asking for the host are
//! refused and Pod Security refusals reach the MCPInstance, and a SIGTERMed leader hands its
//! Lease over in under 3 s.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_dataplane::controller_client::{self, Backoff, ControllerClient, ControllerConfig};
use reflow_dataplane::source::SnapshotStore;
use reflow_e2e::harness::process::SpawnOptions;
use reflow_e2e::harness::{KubeCluster, ManagedChild, controller_bin, kube_cluster};
use secrecy::SecretString;
use serde_json::Value;
use std::sync::Arc;

const SYSTEM: &str = "reflow-system";
const TOKEN: &str = "deploy-cluster-token";
const SAMPLES: &str = "dev-tools";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn crds_apply_without_warnings(k: &KubeCluster) {
    let r = k.run(&["apply", "-f", &root().join("crds/yaml").to_string_lossy()]);
    assert!(r.ok, "CRDs: {}", r.stderr);
    assert!(
        !r.stderr.contains("Warning"),
        "applying the CRDs printed warnings: {}",
        r.stderr
    );
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=30s",
    ]);
}

/// A controller replica, as the chart runs it (in-cluster identity from POD_NAME).
fn controller(k: &KubeCluster, name: &str, key: &str) -> ManagedChild {
    let mut cmd = Command::new(controller_bin().expect("controller binary"));
    cmd.env("KUBECONFIG", &k.kubeconfig)
        .env("REFLOW_CONTROLLER_TOKEN", TOKEN)
        .env("REFLOW_SEALING_KEY", key)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", SYSTEM)
        .env(
            "REFLOW_BRIDGE_IMAGE",
            "registry.invalid/reflow-dataplane:test",
        )
        .args(["--listen", "127.0.0.1:0"]);
    let opts = SpawnOptions {
        stdout_lines: true,
        ..SpawnOptions::default()
    };
    ManagedChild::spawn(name, &mut cmd, opts).expect("controller starts")
}

/// The URL a controller printed (`listening on http://ADDR`).
fn url_of(c: &ManagedChild) -> String {
    let line = c
        .next_line(Duration::from_secs(30))
        .expect("listening line");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned()
}

/// A dataplane's snapshot follower (the controller client a `reflow-dataplane` runs), fed by
/// the controller at `url`: what makes `Programmed` count a dataplane.
struct FedDataplane {
    store: Arc<SnapshotStore>,
    /// What its gateway would have observed of the upstreams (reported to the controller).
    observed: Arc<reflow_dataplane::observed::Observations>,
    _client: ControllerClient,
    rt: tokio::runtime::Runtime,
}

fn fed_dataplane(url: &str, key: &str) -> FedDataplane {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = SnapshotStore::new();
    let observed = Arc::new(reflow_dataplane::observed::Observations::default());
    let key = SealingKey::from_base64(key).expect("key");
    let client = rt.block_on(async {
        controller_client::spawn(
            ControllerConfig {
                url: url.to_owned(),
                token: SecretString::from(TOKEN),
                dataplane: "dp-0".into(),
                cache: None,
                key,
                backoff: Backoff {
                    initial: Duration::from_millis(50),
                    max: Duration::from_millis(500),
                },
                observed: observed.clone(),
                link: std::sync::Arc::new(
                    reflow_dataplane::controller_client::ControllerLink::new(None),
                ),
            },
            store.clone(),
        )
    });
    FedDataplane {
        store,
        observed,
        _client: client,
        rt,
    }
}

/// A Policy edit reaches the dataplane (DESIGN.md §7: CRD change to enforcement ≤ 1 s).
fn policy_edit_reaches_the_dataplane(k: &KubeCluster, dp: &FedDataplane) {
    let policies = k.get(&["policies", "-n", SAMPLES]).expect("policies");
    let first = &policies["items"][0];
    let name = first["metadata"]["name"].as_str().expect("name").to_owned();
    let priority = first["spec"]["priority"].as_i64().unwrap_or(0);
    let before = dp.store.load().hash().to_owned();
    let started = Instant::now();
    let patch = format!("{{\"spec\":{{\"priority\":{}}}}}", priority + 1);
    k.ok(&[
        "patch",
        "policy",
        &name,
        "-n",
        SAMPLES,
        "--type=merge",
        "-p",
        &patch,
    ]);
    k.wait_for("the edit on the dataplane", Duration::from_secs(10), || {
        (dp.store.load().hash() != before).then_some(())
    });
    let took = started.elapsed();
    eprintln!(
        "policy edit -> controller-fed dataplane: {} ms (budget 1000 ms, kubectl included)",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "the edit took {took:?}");
    let _ = &dp.rt;
}

fn holder(k: &KubeCluster) -> Option<String> {
    k.get(&["lease", "reflow-controller", "-n", SYSTEM])
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
        .filter(|h| !h.is_empty())
}

fn samples_get_conditions(k: &KubeCluster) {
    k.ok(&["create", "namespace", SAMPLES]);
    k.ok(&[
        "apply",
        "-f",
        &root().join("config/samples").to_string_lossy(),
    ]);
    for kind in ["targets", "policies", "credentials"] {
        k.wait_for(
            &format!("{kind} Accepted with a Programmed condition"),
            Duration::from_secs(60),
            || {
                let list = k.get(&[kind, "-n", SAMPLES])?;
                let items = list["items"].as_array()?;
                let done = !items.is_empty()
                    && items.iter().all(|o| {
                        condition(o, "Accepted").is_some_and(|c| {
                            c["status"] == "True"
                                && c["observedGeneration"] == o["metadata"]["generation"]
                        }) && condition(o, "Programmed").is_some_and(|c| c["status"] == "True")
                    });
                done.then_some(())
            },
        );
    }
}

/// Issue #18 item 1: a Failed instance used to rewrite its status 110–210 times a second.
fn failed_instance_status_stays_quiet(k: &KubeCluster) {
    let r = k.apply(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: MCPInstance\nmetadata: {{name: lost, namespace: {SAMPLES}}}\n\
         spec: {{targetRef: {{name: no-such-target}}, isolationKey: alice}}\n"
    ));
    assert!(r.ok, "{}", r.stderr);
    let failed = k.wait_for(
        "the instance reports TargetNotFound",
        Duration::from_secs(30),
        || {
            let i = k.get(&["mcpinstance", "lost", "-n", SAMPLES])?;
            (condition(&i, "Ready")?["reason"] == "TargetNotFound").then_some(i)
        },
    );
    let rv = |i: &Value| i["metadata"]["resourceVersion"].as_str().map(str::to_owned);
    std::thread::sleep(Duration::from_secs(4));
    let later = k
        .get(&["mcpinstance", "lost", "-n", SAMPLES])
        .expect("instance");
    assert_eq!(
        rv(&failed),
        rv(&later),
        "the Failed instance's status was rewritten"
    );
    eprintln!(
        "status loop: resourceVersion {:?} unchanged over 4 s",
        rv(&later)
    );
}

fn kubernetes_target(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{transport: kubernetes, isolation: perUser, pod: {{transport: streamableHttp, \
         template: {{spec: {spec}}}}}}}\n"
    )
}

/// An MCPInstance of a plain `kubernetes` Target gets its Pod, Service, Secret and
/// NetworkPolicy, owned by it; deleting the instance collects them (garbage collector).
fn instance_children_come_and_go(k: &KubeCluster) {
    let r = k.apply(&kubernetes_target(
        "podded",
        SAMPLES,
        "{containers: [{name: s, image: registry.invalid/s:1}]}",
    ));
    assert!(r.ok, "{}", r.stderr);
    // Compiled first: an instance of a Target not yet served fails and checks back in a minute.
    k.wait_for("Target podded Accepted", Duration::from_secs(30), || {
        let t = k.get(&["target", "podded", "-n", SAMPLES])?;
        (condition(&t, "Accepted")?["status"] == "True").then_some(())
    });
    let r = k.apply(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: MCPInstance\nmetadata: {{name: podded-alice, namespace: {SAMPLES}}}\n\
         spec: {{targetRef: {{name: podded}}, isolationKey: alice}}\n"
    ));
    assert!(r.ok, "{}", r.stderr);
    let kinds = ["pod", "service", "secret", "networkpolicy"];
    for kind in kinds {
        let child = k.wait_for(
            &format!("the instance's {kind}"),
            Duration::from_secs(30),
            || k.get(&[kind, "mcpi-podded-alice", "-n", SAMPLES]),
        );
        assert_eq!(
            child["metadata"]["ownerReferences"][0]["name"], "podded-alice",
            "{kind}"
        );
    }
    let pod = k
        .get(&["pod", "mcpi-podded-alice", "-n", SAMPLES])
        .expect("pod");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let inst = k.wait_for("Pending with an endpoint", Duration::from_secs(30), || {
        let i = k.get(&["mcpinstance", "podded-alice", "-n", SAMPLES])?;
        (i["status"]["phase"] == "Pending").then_some(i)
    });
    assert_eq!(
        inst["status"]["endpoint"],
        format!("http://mcpi-podded-alice.{SAMPLES}.svc:8080/mcp")
    );
    k.ok(&[
        "delete",
        "mcpinstance",
        "podded-alice",
        "-n",
        SAMPLES,
        "--wait=true",
    ]);
    for kind in kinds {
        k.wait_for(
            &format!("the {kind} collected"),
            Duration::from_secs(30),
            || {
                k.get(&[kind, "mcpi-podded-alice", "-n", SAMPLES])
                    .is_none()
                    .then_some(())
            },
        );
    }
}

/// Issue #17: each host field is refused at admission, by name, and no Pod appears.
fn host_fields_are_refused(k: &KubeCluster) {
    k.ok(&["create", "namespace", "hostile"]);
    for (spec, field) in [
        (
            "{hostNetwork: true, containers: [{name: s, image: i}]}",
            "hostNetwork",
        ),
        (
            "{hostPID: true, containers: [{name: s, image: i}]}",
            "hostPID",
        ),
        (
            "{hostIPC: true, containers: [{name: s, image: i}]}",
            "hostIPC",
        ),
        (
            "{nodeName: n1, containers: [{name: s, image: i}]}",
            "nodeName",
        ),
        (
            "{volumes: [{name: r, hostPath: {path: /}}], containers: [{name: s, image: i}]}",
            "hostPath",
        ),
        (
            "{containers: [{name: s, image: i, ports: [{containerPort: 80, hostPort: 80}]}]}",
            "hostPort",
        ),
        (
            "{containers: [{name: s, image: i, securityContext: {privileged: true}}]}",
            "privileged",
        ),
        (
            "{containers: [{name: s, image: i, securityContext: {allowPrivilegeEscalation: true}}]}",
            "allowPrivilegeEscalation",
        ),
        (
            "{containers: [{name: s, image: i, securityContext: {capabilities: {add: [NET_ADMIN]}}}]}",
            "capabilities.add",
        ),
        (
            "{securityContext: {runAsUser: 0}, containers: [{name: s, image: i}]}",
            "runAsUser",
        ),
    ] {
        let r = k.apply(&kubernetes_target("host", "hostile", spec));
        assert!(!r.ok, "a Target asking for {field} was admitted");
        assert!(
            r.stderr.contains(field),
            "the refusal does not name {field}: {}",
            r.stderr
        );
    }
    let pods = k.get(&["pods", "-n", "hostile"]).expect("pods");
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0));
}

/// Issue #18 item 2: a Pod that Pod Security refuses fails the instance (condition and Event).
fn pod_security_refusal_reaches_the_instance(k: &KubeCluster) {
    k.ok(&["create", "namespace", "restricted"]);
    k.ok(&[
        "label",
        "namespace",
        "restricted",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    // An NFS volume: allowed by Reflow's own checks, not by `restricted`.
    let r = k.apply(&kubernetes_target(
        "nfs",
        "restricted",
        "{volumes: [{name: data, nfs: {server: nfs.invalid, path: /}}], containers: [{name: s, image: registry.invalid/s:1}]}",
    ));
    assert!(r.ok, "{}", r.stderr);
    k.wait_for("Target nfs Accepted", Duration::from_secs(30), || {
        let t = k.get(&["target", "nfs", "-n", "restricted"])?;
        (condition(&t, "Accepted")?["status"] == "True").then_some(())
    });
    let r = k.apply(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: MCPInstance\nmetadata: {name: nfs-alice, namespace: restricted}\n\
         spec: {targetRef: {name: nfs}, isolationKey: alice}\n",
    );
    assert!(r.ok, "{}", r.stderr);
    let cond = k.wait_for(
        "the instance reports PodRejected",
        Duration::from_secs(30),
        || {
            let i = k.get(&["mcpinstance", "nfs-alice", "-n", "restricted"])?;
            let c = condition(&i, "Ready")?.clone();
            (i["status"]["phase"] == "Failed" && c["reason"] == "PodRejected").then_some(c)
        },
    );
    assert!(
        cond["message"]
            .as_str()
            .unwrap_or_default()
            .contains("PodSecurity"),
        "{cond}"
    );
    let pods = k.get(&["pods", "-n", "restricted"]).expect("pods");
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "no Pod");
    k.wait_for("a PodRejected Event", Duration::from_secs(10), || {
        let events = k.get(&["events.v1.events.k8s.io", "-n", "restricted"])?;
        events["items"]
            .as_array()?
            .iter()
            .any(|e| e["reason"] == "PodRejected" && e["regarding"]["name"] == "nfs-alice")
            .then_some(())
    });
}

/// Issue #18 item 6: SIGTERM hands the Lease over (it used to take 10.4 s) and the roster goes.
fn leader_hands_over_on_sigterm(k: &KubeCluster, a: &mut ManagedChild, b: &mut ManagedChild) {
    let leader = k.wait_for("a lease holder", Duration::from_secs(30), || holder(k));
    let (gone, stays) = if leader == "ctl-a" { (a, b) } else { (b, a) };
    let rosters_before = k.get(&["leases", "-n", SYSTEM]).expect("leases");
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &gone.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let next = k.wait_for("another holder", Duration::from_secs(10), || {
        holder(k).filter(|h| *h != leader)
    });
    let took = started.elapsed();
    eprintln!(
        "leader failover: {leader} -> {next} in {} ms",
        took.as_millis()
    );
    assert_eq!(next, stays.what());
    assert!(took < Duration::from_secs(3), "failover took {took:?}");
    assert!(
        gone.wait_timeout(Duration::from_secs(10)).is_some(),
        "SIGTERM did not stop it"
    );
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let before = names(&rosters_before);
    let after = names(&k.get(&["leases", "-n", SYSTEM]).expect("leases"));
    let own: Vec<_> = before.iter().filter(|n| n.contains(&leader)).collect();
    assert!(!own.is_empty(), "the leader had a roster: {before:?}");
    assert!(
        own.iter().all(|n| !after.contains(n)),
        "roster left behind: {after:?}"
    );
}

/// The README's `helm install` (Pods stay Pending: no kubelet), then what each ServiceAccount
/// may do, asked of the API server's authorizer with `kubectl auth can-i`.
fn helm_install_and_rbac(k: &KubeCluster) {
    let chart = root().join("chart");
    let r = kube_cluster::run(k.helm().args(["install", "reflow"]).arg(&chart).args([
        "--namespace",
        "reflow-helm",
        "--create-namespace",
        "--set",
        "controller.watchNamespaces={dev-tools}",
        "--timeout",
        "60s",
    ]));
    assert!(r.ok, "helm install: {}{}", r.stdout, r.stderr);
    for deploy in ["reflow-controller", "reflow-dataplane"] {
        k.ok(&["get", "deployment", deploy, "-n", "reflow-helm"]);
    }
    let sa = |name: &str| format!("--as=system:serviceaccount:reflow-helm:{name}");
    let can = |who: &str, verb: &str, what: &str, ns: &str| -> bool {
        let mut args = vec!["auth", "can-i", verb];
        match what.strip_suffix("/status") {
            Some(resource) => args.extend([resource, "--subresource=status"]),
            None => args.push(what),
        }
        let who = sa(who);
        args.extend(["-n", ns, &who]);
        let r = k.run(&args);
        r.stdout.trim() == "yes"
    };
    let controller = "reflow-controller";
    for (verb, what, ns) in [
        ("watch", "targets.mcp.reflow.io", SAMPLES),
        ("patch", "targets.mcp.reflow.io/status", SAMPLES),
        ("patch", "targets.mcp.reflow.io", SAMPLES),
        ("patch", "mcpinstances.mcp.reflow.io/status", SAMPLES),
        ("create", "pods", SAMPLES),
        ("delete", "pods", SAMPLES),
        ("patch", "networkpolicies.networking.k8s.io", SAMPLES),
        ("create", "events.events.k8s.io", SAMPLES),
        ("list", "secrets", SAMPLES),
        (
            "update",
            "leases.coordination.k8s.io/reflow-controller",
            "reflow-helm",
        ),
        ("delete", "leases.coordination.k8s.io", "reflow-helm"),
        ("list", "mcpinstances.mcp.reflow.io", SAMPLES),
        ("delete", "mcpinstances.mcp.reflow.io", SAMPLES),
        // Users' grants: a sealed Secret and a user-managed Credential per user and Target.
        ("delete", "secrets", SAMPLES),
        ("patch", "credentials.mcp.reflow.io", SAMPLES),
        ("delete", "credentials.mcp.reflow.io", SAMPLES),
    ] {
        assert!(
            can(controller, verb, what, ns),
            "controller cannot {verb} {what} in {ns}"
        );
    }
    for (verb, what, ns) in [
        ("list", "secrets", "reflow-helm"),
        ("list", "secrets", "default"),
        ("delete", "targets.mcp.reflow.io", SAMPLES),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "default",
        ),
        ("update", "leases.coordination.k8s.io/other", "reflow-helm"),
    ] {
        assert!(
            !can(controller, verb, what, ns),
            "controller may {verb} {what} in {ns}"
        );
    }
    for (verb, what, ns) in [
        ("get", "secrets", "reflow-helm"),
        ("list", "targets.mcp.reflow.io", SAMPLES),
        ("create", "pods", SAMPLES),
        ("get", "leases.coordination.k8s.io", "reflow-helm"),
        ("create", "credentials.mcp.reflow.io", SAMPLES),
    ] {
        assert!(
            !can("reflow-dataplane", verb, what, ns),
            "dataplane may {verb} {what}"
        );
    }
    // The pre-delete hook that deletes MCPInstances is part of the release; it cannot run here
    // (no kubelet), so uninstall skips hooks and `instances_go_before_uninstall` runs its command.
    let hooks = kube_cluster::run(
        k.helm()
            .args(["get", "hooks", "reflow", "-n", "reflow-helm"]),
    );
    assert!(
        hooks.stdout.contains("pre-delete") && hooks.stdout.contains("delete-instances"),
        "{}",
        hooks.stdout
    );
    let r = kube_cluster::run(k.helm().args([
        "uninstall",
        "reflow",
        "--namespace",
        "reflow-helm",
        "--no-hooks",
    ]));
    assert!(r.ok, "helm uninstall: {}", r.stderr);
}

/// Issue #18 item 6: `helm uninstall` left MCPInstances, their Pods and credential Secrets; the
/// hook's command deletes the instances and the garbage collector takes the rest.
fn instances_go_before_uninstall(k: &KubeCluster) {
    let r = k.apply(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: MCPInstance\nmetadata: {{name: podded-carol, namespace: {SAMPLES}}}\n\
         spec: {{targetRef: {{name: podded}}, isolationKey: carol}}\n"
    ));
    assert!(r.ok, "{}", r.stderr);
    k.wait_for("carol's pod", Duration::from_secs(30), || {
        k.get(&["pod", "mcpi-podded-carol", "-n", SAMPLES])
    });
    let out = kube_cluster::run(
        Command::new(controller_bin().expect("controller"))
            .env("KUBECONFIG", &k.kubeconfig)
            .arg("delete-instances"),
    );
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    for kind in [
        "mcpinstance/podded-carol",
        "pod/mcpi-podded-carol",
        "secret/mcpi-podded-carol",
    ] {
        k.wait_for(&format!("{kind} gone"), Duration::from_secs(30), || {
            k.get(&[kind, "-n", SAMPLES]).is_none().then_some(())
        });
    }
}

/// Issue #18 item 4 and #22 part 3 on the real API server: a dataplane's observations become
/// the Target's `Ready`, `PREFIX`/`TOOLS` columns and digests; an unchanged world writes
/// nothing (resourceVersion stable); a failure says why without secrets; pins approved with the
/// annotation; drift raises `ToolsDrifted` and an Event; hostile reports are refused.
fn target_status_from_observations(k: &KubeCluster, dp: &FedDataplane, urls: &[String]) {
    let targets = k.get(&["targets", "-n", SAMPLES]).expect("targets");
    let name = targets["items"][0]["metadata"]["name"]
        .as_str()
        .expect("a sample Target")
        .to_owned();
    let get = || k.get(&["target", &name, "-n", SAMPLES]);
    let digest = |c: char| c.to_string().repeat(64);
    let tools = vec![
        ("add".to_owned(), digest('a')),
        ("echo".to_owned(), digest('e')),
    ];
    dp.observed.record_tools(SAMPLES, &name, &tools);
    let ready = k.wait_for("Ready=True with columns", Duration::from_secs(60), || {
        let t = get()?;
        let c = condition(&t, "Ready")?;
        (c["status"] == "True" && t["status"]["tools"] == 2).then_some(t)
    });
    assert!(
        ready["status"]["prefix"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{ready}"
    );
    assert_eq!(ready["status"]["toolDigests"][1]["name"], "echo");
    assert_eq!(
        condition(&ready, "Ready").expect("Ready")["reason"],
        "Reachable"
    );
    let columns = k.ok(&["get", "target", &name, "-n", SAMPLES]);
    eprintln!("kubectl get target:\n{columns}");
    assert!(
        columns.contains("True") && columns.contains(" 2 "),
        "{columns}"
    );

    // Nothing changes: nothing is written (the status pass runs every few seconds).
    let rv = |t: &Value| t["metadata"]["resourceVersion"].as_str().map(str::to_owned);
    std::thread::sleep(Duration::from_secs(6));
    let later = get().expect("target");
    assert_eq!(
        rv(&ready),
        rv(&later),
        "an unchanged Target's status was rewritten"
    );
    eprintln!(
        "Target status loop: resourceVersion {:?} unchanged over 6 s",
        rv(&later)
    );

    // A failure says why, without the URL's secrets.
    dp.observed.record_failure(
        SAMPLES,
        &name,
        reflow_crds::observed::ObservedReason::NotReady,
        "GET https://bot:hunter2@up.example/mcp?token=s3cret did not answer",
    );
    let down = k.wait_for("Ready=False NotReady", Duration::from_secs(60), || {
        let t = get()?;
        (condition(&t, "Ready")?["reason"] == "NotReady").then_some(t)
    });
    let message = condition(&down, "Ready").expect("Ready")["message"].to_string();
    assert!(message.contains("https://up.example/mcp"), "{message}");
    assert!(
        !message.contains("hunter2") && !message.contains("s3cret"),
        "{message}"
    );

    // Pinning: an empty pin set in enforce mode drifts; approval pins what was observed.
    k.ok(&[
        "patch",
        "target",
        &name,
        "-n",
        SAMPLES,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"toolPinning":{"mode":"enforce"}}}"#,
    ]);
    dp.observed.record_tools(SAMPLES, &name, &tools);
    k.wait_for("ToolsDrifted=True", Duration::from_secs(60), || {
        let t = get()?;
        (condition(&t, "ToolsDrifted")?["status"] == "True").then_some(())
    });
    k.wait_for("a ToolsDrifted Event", Duration::from_secs(30), || {
        let events = k.get(&["events", "-n", SAMPLES])?;
        events["items"]
            .as_array()?
            .iter()
            .any(|e| {
                e["reason"] == "ToolsDrifted"
                    && (e["regarding"]["name"] == name.as_str()
                        || e["involvedObject"]["name"] == name.as_str())
            })
            .then_some(())
    });
    k.ok(&[
        "annotate",
        "target",
        &name,
        "-n",
        SAMPLES,
        "mcp.reflow.io/approve-tools=*",
    ]);
    let approved = k.wait_for("pins approved", Duration::from_secs(60), || {
        let t = get()?;
        let pins = t["spec"]["toolPinning"]["pins"].as_array()?.len();
        (pins == 2 && condition(&t, "ToolsDrifted")?["status"] == "False").then_some(t)
    });
    assert!(
        approved["metadata"]["annotations"]
            .get("mcp.reflow.io/approve-tools")
            .is_none(),
        "the approval annotation is consumed"
    );
    assert_eq!(
        approved["spec"]["toolPinning"]["pins"][1]["digest"],
        digest('e')
    );

    // Hostile reports: no token, a bloated one, an invented Target.
    let http = reqwest::Client::new();
    let post = |url: &str, body: String, token: &str| {
        let req = http
            .post(format!("{url}{}", reflow_crds::observed::OBSERVED_PATH))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        dp.rt
            .block_on(req.send())
            .expect("controller answers")
            .status()
            .as_u16()
    };
    for url in urls {
        assert_eq!(post(url, "{}".into(), "wrong"), 401);
        let many: Vec<Value> = (0..600)
            .map(|i| serde_json::json!({"name": format!("t{i:04}"), "digest": digest('b')}))
            .collect();
        let bloated = serde_json::json!({"dataplane": "dp-0", "targets": [
            {"namespace": SAMPLES, "name": name, "reachable": true, "tools": many}
        ]});
        assert_eq!(post(url, bloated.to_string(), TOKEN), 422);
        let huge = format!(
            "{{\"dataplane\":\"dp-0\",\"targets\":[],\"pad\":\"{}\"}}",
            "x".repeat(2 << 20)
        );
        assert_eq!(post(url, huge, TOKEN), 413);
    }
}

#[test]
fn the_controller_on_a_real_api_server() {
    let Some(k) = KubeCluster::start("deploy-cluster").expect("cluster") else {
        return;
    };
    crds_apply_without_warnings(&k);
    k.ok(&["create", "namespace", SYSTEM]);
    let key = reflow_crds::SealingKey::generate_base64();
    let mut a = controller(&k, "ctl-a", &key);
    let mut b = controller(&k, "ctl-b", &key);
    let url_a = url_of(&a);
    let dp = fed_dataplane(&url_a, &key);
    let url_b = url_of(&b);
    samples_get_conditions(&k);
    policy_edit_reaches_the_dataplane(&k, &dp);
    target_status_from_observations(&k, &dp, &[url_a, url_b]);
    failed_instance_status_stays_quiet(&k);
    instance_children_come_and_go(&k);
    host_fields_are_refused(&k);
    pod_security_refusal_reaches_the_instance(&k);
    helm_install_and_rbac(&k);
    instances_go_before_uninstall(&k);
    drop(dp);
    leader_hands_over_on_sigterm(&k, &mut a, &mut b);
    for c in [&mut a, &mut b] {
        c.kill();
    }
}
