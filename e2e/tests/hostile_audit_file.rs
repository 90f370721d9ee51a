//! The JSON-lines audit sink of the real binary never drops: its file is a FIFO that nobody
//! reads for a while, so the pipe and the 16-event queue fill while calls keep coming. Every
//! answered call's event must come out once the reader starts; before the fix the overflow was
//! dropped ("audit queue full; event dropped").

use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

mod hostile_support;
use hostile_support::{Gw, initialize_body, post, runtime};

const CALLS: usize = 600;

#[test]
fn a_stalled_audit_file_slows_calls_and_loses_no_event() {
    let dir = std::env::temp_dir().join(format!("reflow-audit-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let fifo = dir.join("audit.fifo");
    let _ = std::fs::remove_file(&fifo);
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    // The reader opens first (a FIFO's open blocks until both ends are there), then waits for
    // the go-ahead before reading anything: meanwhile the pipe fills.
    let (go, wait) = mpsc::channel::<()>();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&reader_path).expect("open the FIFO for reading");
        let _ = wait.recv();
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let gw = Gw::start(
        "audit-fifo",
        &format!(
            "{{limits: {{inFlightPerUser: 0}}}}\naudit: {{sink: file, path: {}, capacity: 16}}",
            fifo.display()
        ),
    );
    let rt = runtime();
    let answered = rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let (status, headers, body) = post(
            &http,
            &gw,
            "mallory",
            None,
            &initialize_body(json!({"name": "audit", "version": "0"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let sid = headers["mcp-session-id"].to_str().expect("sid").to_owned();
        let calls = (0..CALLS).map(|i| {
            let (http, gw, sid) = (&http, &gw, sid.clone());
            async move {
                let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": format!("nothing_{i}"), "arguments": {}}});
                post(http, gw, "mallory", Some(&sid), &body).await.0
            }
        });
        let all = futures::future::join_all(calls);
        tokio::pin!(all);
        // Nobody reads the audit FIFO yet: calls are held back, none is lost.
        let early = tokio::time::timeout(Duration::from_secs(3), &mut all).await;
        let held_back = early.is_err();
        go.send(()).expect("reader");
        let statuses = match early {
            Ok(statuses) => statuses,
            Err(_) => tokio::time::timeout(Duration::from_secs(60), all)
                .await
                .expect("calls finish once the audit file is read"),
        };
        let mut seen = std::collections::BTreeMap::new();
        for s in &statuses {
            *seen.entry(*s).or_insert(0) += 1;
        }
        (seen, held_back)
    });
    let (answered, held_back) = answered;
    assert_eq!(
        answered.get(&200),
        Some(&CALLS),
        "every call is answered: {answered:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut audited = std::collections::HashSet::new();
    while audited.len() < CALLS && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200))
            && let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["method"] == "tools/call"
        {
            audited.insert(event["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(audited.len(), CALLS, "one event per call, none dropped");
    assert!(held_back, "calls wait for the stalled audit file");
    let out = gw.process.output();
    assert!(!out.contains("event dropped"), "{out}");
    assert!(out.contains("audit queue full; waiting"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
