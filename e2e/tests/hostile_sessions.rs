//! Sessions under attack on the real binary: a stranger who knows (or replays) a session id gets
//! the same 404 as for an unknown one, and cannot keep the session alive by using it.

use std::time::Duration;

use serde_json::json;

mod hostile_support;
use hostile_support::{Gw, open_session, post, runtime};

#[test]
fn a_non_owner_gets_404_and_does_not_refresh_the_idle_timer() {
    let gw = Gw::start("touch", "{sessionIdleSeconds: 3}");
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let sid = open_session(&http, &gw, "alice").await.expect("session");
        let ping = |i: u64| json!({"jsonrpc": "2.0", "id": i, "method": "ping"});
        let (own, _, body) = post(&http, &gw, "alice", Some(&sid), &ping(1)).await;
        assert_eq!(own, 200, "{body}");
        // Mallory uses alice's id every half second for longer than the idle timeout.
        for i in 0..9 {
            let (status, _, _) = post(&http, &gw, "mallory", Some(&sid), &ping(10 + i)).await;
            assert_eq!(status, 404, "a stranger's use is refused like an unknown id");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (late, _, body) = post(&http, &gw, "alice", Some(&sid), &ping(2)).await;
        assert_eq!(
            late, 404,
            "alice's idle session expired: a stranger's requests must not have refreshed it ({body})"
        );
    });
}
