//! `spec.sandbox` of a Target: compiled into the snapshot with defaults, a `Sandboxed`
//! condition on every STDIO Target (False when turned off), refused on other transports.

mod common;

use common::*;
use reflow_crds::compile::{ACCEPTED, ObjectKind, SANDBOXED};
use reflow_crds::snapshot::{StdioSandbox, Upstream};

fn sandbox_of(c: &reflow_crds::compile::Compiled, name: &str) -> StdioSandbox {
    match &target(c, "ns", name).upstream {
        Upstream::Stdio { sandbox, .. } => sandbox.clone(),
        other => panic!("{name} is not stdio: {other:?}"),
    }
}

#[test]
fn stdio_targets_are_sandboxed_unless_they_say_off_and_the_condition_says_so() {
    let c = compile(&[
        target_doc("ns", "plain", "", "{transport: stdio, command: srv}"),
        target_doc(
            "ns",
            "tuned",
            "",
            "{transport: stdio, command: srv, sandbox: {limits: {memoryMiB: 64, processes: 8}, readOnlyPaths: [/opt/node]}}",
        ),
        target_doc("ns", "open", "", "{transport: stdio, command: srv, sandbox: {mode: 'off'}}"),
    ]
    .concat());
    let plain = sandbox_of(&c, "plain");
    assert_eq!(plain, StdioSandbox::default());
    assert!(plain.enforce);
    let tuned = sandbox_of(&c, "tuned");
    assert!(tuned.enforce);
    assert_eq!(tuned.limits.memory_mib, Some(64));
    assert_eq!(tuned.limits.processes, Some(8));
    assert_eq!(
        tuned.limits.open_files,
        StdioSandbox::default().limits.open_files
    );
    assert_eq!(&*tuned.read_only_paths[0], "/opt/node");
    assert!(!sandbox_of(&c, "open").enforce);

    assert!(cond(&c, ObjectKind::Target, "ns", "plain", SANDBOXED).status);
    let off = cond(&c, ObjectKind::Target, "ns", "open", SANDBOXED);
    assert!(!off.status);
    assert_eq!(off.reason, "SandboxOff");
    // Off is a choice, not a rejection: the Target still serves.
    assert!(cond(&c, ObjectKind::Target, "ns", "open", ACCEPTED).status);
}

#[test]
fn a_sandbox_on_another_transport_or_a_relative_path_is_refused() {
    let c = compile(
        &[
            target_doc(
                "ns",
                "web",
                "",
                "{transport: streamableHttp, url: 'http://x/mcp', sandbox: {mode: enforce}}",
            ),
            target_doc(
                "ns",
                "rel",
                "",
                "{transport: stdio, command: srv, sandbox: {readOnlyPaths: [opt/../etc]}}",
            ),
        ]
        .concat(),
    );
    let web = cond(&c, ObjectKind::Target, "ns", "web", ACCEPTED);
    assert!(!web.status);
    assert!(
        web.message.contains("sandbox is only valid for the stdio"),
        "{}",
        web.message
    );
    let rel = cond(&c, ObjectKind::Target, "ns", "rel", ACCEPTED);
    assert!(!rel.status);
    assert_eq!(rel.reason, "InvalidSandbox");
    assert!(c.snapshot.target("ns", "web").is_none());
}
