//! The replica hand-off under attack and under failure: a hand-off forged from outside (no
//! token, the wrong token, a replayed old one) is refused; an owner row whose address was
//! written without the replica token is never sent a client's request; a client cannot answer
//! for another user's session through another replica; a frozen owner costs a bounded wait, after
//! which the session is claimed, and the owner, thawed, does not serve it any more.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reflow_dataplane::postgres::ReplicaToken;
use secrecy::SecretString;
use serde_json::{Value, json};

mod replicas_support;
use replicas_support::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A hand-off header as a replica makes it, signed with `token`, dated `ms`.
fn handoff(token: &str, ms: u64, method: &str, target: &str) -> String {
    handoff_as(token, ms, method, target, "")
}

/// The same, its signature also covering a certificate identity (`identity_header`).
fn handoff_as(token: &str, ms: u64, method: &str, target: &str, identity: &str) -> String {
    let t = ReplicaToken::new(SecretString::from(token.to_owned()));
    let ms = ms.to_string();
    let sig = t.sign(&[
        "reflow-handoff",
        &ms,
        "intruder",
        method,
        target,
        "",
        identity,
    ]);
    format!("v1.{ms}.intruder.{sig}")
}

/// A verified client certificate's identity as a replica hands it on.
fn identity_header(user: &str) -> String {
    hex_encode(
        json!({"user": user, "groups": [], "roles": []})
            .to_string()
            .as_bytes(),
    )
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ping(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn forged_hand_offs_foreign_answers_forged_owners_and_frozen_owners() {
    let c = Cluster::start(3);
    let rt = runtime();
    let http = http();
    let alice = dev_token("alice");
    let url = c.mcp_url();
    let sid = rt.block_on(open_session(&http, &url, &alice));
    let owner = c.owner_of(&format!("s:{sid}")).expect("an owner");
    let other = (owner + 1) % 3;
    let direct = c.replicas[other].mcp_url();

    rt.block_on(async {
        // Forged hand-offs, straight at a replica: each refused with 403, nothing served.
        for (what, header) in [
            ("garbage", "v1.1.x.00".to_owned()),
            (
                "wrong token",
                handoff("not-the-replica-token-0123456789", now_ms(), "POST", "/mcp"),
            ),
            (
                "replayed",
                handoff(REPLICA_TOKEN, now_ms() - 120_000, "POST", "/mcp"),
            ),
            (
                "other path",
                handoff(REPLICA_TOKEN, now_ms(), "POST", "/mcp/e2e/cf"),
            ),
        ] {
            let resp = http
                .post(&direct)
                .bearer_auth(&alice)
                .header("accept", BOTH)
                .header("mcp-session-id", &sid)
                .header("reflow-handoff", header)
                .json(&ping(1))
                .send()
                .await
                .expect("answers");
            assert_eq!(resp.status(), 403, "{what}");
        }
        // The same request signed right is taken (the check is not a blanket refusal): the
        // receiver is not the owner, so it says so (421) rather than serve it.
        let resp = http
            .post(&direct)
            .bearer_auth(&alice)
            .header("accept", BOTH)
            .header("mcp-session-id", &sid)
            .header(
                "reflow-handoff",
                handoff(REPLICA_TOKEN, now_ms(), "POST", "/mcp"),
            )
            .json(&ping(1))
            .send()
            .await
            .expect("answers");
        assert_eq!(resp.status(), 421);

        certificate_identities(&http, &c.replicas[owner].mcp_url(), &sid).await;

        // Bob answers (a JSON-RPC response) into Alice's session, through another replica:
        // handed to the owner, which refuses him; Alice's session is untouched.
        let bob = dev_token("bob");
        let answer = json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"action": "accept"}});
        let resp = post(&http, &direct, &bob, Some(&sid), BOTH, answer).await;
        assert_eq!(resp.status(), 404, "another user's session is not found");
        let resp = post(&http, &direct, &alice, Some(&sid), BOTH, ping(2)).await;
        assert_eq!(resp.status(), 200);
    });

    // An owner row pointing at an address written without the token: refused, never contacted.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("trap");
    trap.set_nonblocking(true).expect("nonblocking");
    let evil = format!("http://{}", trap.local_addr().expect("addr"));
    let forged_sid = rt.block_on(open_session(&http, &url, &alice));
    psql(
        &c.db_url,
        &format!(
            "INSERT INTO reflow_replicas (id, address, proof) VALUES ('evil', '{evil}', 'deadbeef');
             UPDATE reflow_owners SET replica = 'evil' WHERE key = 's:{forged_sid}'"
        ),
    );
    std::thread::sleep(Duration::from_millis(2_500)); // past every replica's ownership cache
    let status = rt.block_on(async {
        post(&http, &url, &alice, Some(&forged_sid), BOTH, ping(3))
            .await
            .status()
    });
    assert_eq!(status, 502, "a forged owner is refused");
    let mut probe = [0u8; 1];
    let contacted = trap.accept().map(|(mut s, _)| s.read(&mut probe));
    assert!(contacted.is_err(), "the forged address got a connection");

    // A frozen owner: the hand-off waits until its heartbeat is stale, then claims the session.
    let pid = c.replicas[owner].pid();
    signal(pid, "-STOP");
    let started = Instant::now();
    let status = rt.block_on(async {
        post(&http, &direct, &alice, Some(&sid), BOTH, ping(4))
            .await
            .status()
    });
    let waited = started.elapsed();
    signal(pid, "-CONT");
    println!("replicas_hostile: a frozen owner cost {waited:?} (dead after {DEAD_AFTER_MS} ms)");
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(DEAD_AFTER_MS / 2) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let claimed = c.owner_of(&format!("s:{sid}")).expect("owned");
    assert_ne!(claimed, owner, "claimed by a live replica");
    // Thawed, the old owner hands the session on instead of serving it from its stale state.
    std::thread::sleep(Duration::from_millis(1_500));
    let old = c.replicas[owner].mcp_url();
    let status = rt.block_on(async {
        post(&http, &old, &alice, Some(&sid), BOTH, ping(5))
            .await
            .status()
    });
    assert_eq!(status, 200);
    assert_eq!(c.owner_of(&format!("s:{sid}")), Some(claimed));
}

/// A certificate identity travels only under a hand-off signature that covers it: sent straight
/// to the session's owner, a signed identity is served as that user (no bearer token); the same
/// identity without a hand-off, under a signature that does not cover it, or signed with another
/// token is refused.
async fn certificate_identities(http: &reqwest::Client, owner: &str, sid: &str) {
    let send = |identity: String, handoff: Option<String>| {
        let mut req = http
            .post(owner)
            .header("accept", BOTH)
            .header("mcp-protocol-version", "2025-06-18")
            .header("mcp-session-id", sid)
            .header("reflow-handoff-identity", identity)
            .json(&ping(7));
        if let Some(h) = handoff {
            req = req.header("reflow-handoff", h);
        }
        req.send()
    };
    let alice = identity_header("alice");
    let signed = handoff_as(REPLICA_TOKEN, now_ms(), "POST", "/mcp", &alice);
    let r = send(alice.clone(), Some(signed)).await.expect("answers");
    assert_eq!(
        r.status(),
        200,
        "a signed certificate identity is the caller"
    );
    let r = send(alice.clone(), None).await.expect("answers");
    assert_eq!(
        r.status(),
        401,
        "an identity header without a hand-off is ignored"
    );
    let uncovered = handoff(REPLICA_TOKEN, now_ms(), "POST", "/mcp");
    let r = send(alice.clone(), Some(uncovered)).await.expect("answers");
    assert_eq!(
        r.status(),
        403,
        "a signature that does not cover the identity"
    );
    let mallory = identity_header("mallory");
    let swapped = handoff_as(REPLICA_TOKEN, now_ms(), "POST", "/mcp", &alice);
    let r = send(mallory, Some(swapped)).await.expect("answers");
    assert_eq!(r.status(), 403, "an identity swapped under a signature");
    let theirs = handoff_as(
        "not-the-replica-token-0123456789",
        now_ms(),
        "POST",
        "/mcp",
        &alice,
    );
    let r = send(alice, Some(theirs)).await.expect("answers");
    assert_eq!(r.status(), 403, "signed with another token");
}
