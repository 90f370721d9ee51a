//! The controller's HTTP API through its router: the token gate, the watch stream (snapshot on
//! connect, the next one on change), applied reports turning into Programmed N of M, and
//! readiness before the first compilation.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use reflow_controller::fleet::Fleet;
use reflow_controller::metrics::Metrics;
use reflow_controller::publish::Publisher;
use reflow_controller::server::{ApiState, router};
use reflow_controller::token::ApiToken;
use reflow_crds::loader::{Loaded, load_str};
use reflow_crds::wire::{AppliedReport, FrameKind, Outcome, WatchFrame};
use reflow_crds::{SealingKey, compile};
use secrecy::SecretString;
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "api-test-token";

fn compiled(url: &str) -> reflow_crds::Compiled {
    let yaml = format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: a, namespace: ns}}\nspec: {{transport: streamableHttp, url: '{url}'}}\n"
    );
    let mut loaded = Loaded::default();
    load_str(std::path::Path::new("a.yaml"), &yaml, &mut loaded).unwrap();
    compile(&loaded.inputs, &SealingKey::from_bytes(&[1; 32])).unwrap()
}

fn state(publisher: &Publisher, fleet: &Fleet) -> ApiState {
    ApiState {
        published: publisher.subscribe(),
        fleet: fleet.clone(),
        token: ApiToken::new(&SecretString::from(TOKEN)).unwrap(),
        metrics: Arc::new(Metrics::new()),
        heartbeat: Duration::from_millis(200),
        instances: None,
        grants: None,
    }
}

fn req(
    method: &str,
    path: &str,
    token: Option<&str>,
    dataplane: Option<&str>,
    body: Body,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(d) = dataplane {
        b = b.header("x-reflow-dataplane", d);
    }
    b.header("content-type", "application/json")
        .body(body)
        .unwrap()
}

async fn json_of(resp: axum::response::Response) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn report(dp: &str, version: u64, hash: &str) -> Body {
    Body::from(
        serde_json::to_vec(&AppliedReport {
            dataplane: dp.into(),
            version,
            hash: hash.into(),
            outcome: Outcome::Applied,
            message: None,
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn the_token_gate_and_readiness() {
    let publisher = Publisher::new();
    let fleet = Fleet::default();
    let app = router(state(&publisher, &fleet));
    let call = |r| app.clone().oneshot(r);
    let r = call(req("GET", "/readyz", None, None, Body::empty()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    for token in [None, Some("wrong"), Some("api-test-token-")] {
        let r = call(req(
            "GET",
            "/v1/snapshots/watch",
            token,
            Some("dp"),
            Body::empty(),
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        let r = call(req("GET", "/v1/status", token, None, Body::empty()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = call(req(
            "POST",
            "/v1/snapshots/applied",
            token,
            None,
            report("dp", 1, "h"),
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    for bad_name in [None, Some("has space"), Some("")] {
        let r = call(req(
            "GET",
            "/v1/snapshots/watch",
            Some(TOKEN),
            bad_name,
            Body::empty(),
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad_name:?}");
    }
    publisher.publish(compiled("http://a")).unwrap();
    let r = call(req("GET", "/readyz", None, None, Body::empty()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = call(req("GET", "/metrics", None, None, Body::empty()))
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("reflow_controller_snapshot_version"),
        "{text}"
    );
    assert!(!text.contains(TOKEN));
}

#[tokio::test]
async fn the_stream_sends_each_snapshot_once_and_reports_make_programmed() {
    let publisher = Publisher::new();
    let fleet = Fleet::default();
    let app = router(state(&publisher, &fleet));
    let v1 = publisher.publish(compiled("http://a")).unwrap();

    let resp = app
        .clone()
        .oneshot(req(
            "GET",
            "/v1/snapshots/watch",
            Some(TOKEN),
            Some("dp-1"),
            Body::empty(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body().into_data_stream();
    let mut next_frame = async || -> WatchFrame {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .unwrap();
        assert_eq!(chunk.last(), Some(&b'\n'));
        serde_json::from_slice(&chunk).unwrap()
    };
    let f = next_frame().await;
    assert_eq!((f.kind, f.version), (FrameKind::Snapshot, Some(v1)));
    let h1 = f.hash.clone().unwrap();
    WatchFrame::open_snapshot(v1, &h1, f.snapshot.as_deref().unwrap()).expect("valid snapshot");
    assert_eq!(fleet.programmed(&h1).connected, 1);

    // Unchanged content publishes nothing new; idle streams carry heartbeats.
    publisher.publish(compiled("http://a")).unwrap();
    assert_eq!(next_frame().await.kind, FrameKind::Heartbeat);

    let status = |app: axum::Router| async move {
        json_of(
            app.oneshot(req("GET", "/v1/status", Some(TOKEN), None, Body::empty()))
                .await
                .unwrap(),
        )
        .await
    };
    let s = status(app.clone()).await;
    assert_eq!(s["programmed"]["applied"], 0);
    assert_eq!(s["objects"][0]["conditions"][2]["reason"], "Pending");

    let r = app
        .clone()
        .oneshot(req(
            "POST",
            "/v1/snapshots/applied",
            Some(TOKEN),
            None,
            report("dp-1", v1, &h1),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .clone()
        .oneshot(req(
            "POST",
            "/v1/snapshots/applied",
            Some(TOKEN),
            None,
            report("stranger", v1, &h1),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "no stream, no vote");
    let s = status(app.clone()).await;
    assert_eq!(s["programmed"]["applied"], 1);
    assert_eq!(s["objects"][0]["conditions"][2]["status"], "True");
    assert_eq!(
        s["objects"][0]["conditions"][2]["message"],
        "applied by 1 of 1 dataplanes"
    );

    // Observations (issue #18 item 4): the Target's Ready and TOOLS come from them; reports
    // from a dataplane with no stream, invented Targets and broken bounds are not taken.
    let target = s["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Target")
        .expect("a Target")
        .clone();
    assert_eq!(target["conditions"][3]["reason"], "NotObserved", "{target}");
    let observation = |dp: &str, name: &str, tools: usize| {
        let tools: Vec<serde_json::Value> = (0..tools)
            .map(|i| serde_json::json!({"name": format!("t{i:04}"), "digest": "a".repeat(64)}))
            .collect();
        Body::from(
            serde_json::json!({"dataplane": dp, "targets": [{
                "namespace": target["namespace"], "name": name, "reachable": true, "tools": tools,
            }]})
            .to_string(),
        )
    };
    let post = |body: Body| {
        app.clone().oneshot(req(
            "POST",
            reflow_crds::observed::OBSERVED_PATH,
            Some(TOKEN),
            None,
            body,
        ))
    };
    let name = target["name"].as_str().unwrap().to_owned();
    assert_eq!(
        post(observation("stranger", &name, 1))
            .await
            .unwrap()
            .status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        post(observation("dp-1", &name, 513))
            .await
            .unwrap()
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "more tools than the bound"
    );
    assert_eq!(
        post(observation("dp-1", "invented", 1))
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(app.clone()).await["dataplanes"][0]["observed"],
        serde_json::json!(null),
        "an invented Target is dropped"
    );
    assert_eq!(
        post(observation("dp-1", &name, 3)).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let s = status(app.clone()).await;
    let target = s["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Target")
        .unwrap();
    assert_eq!(target["conditions"][3]["type"], "Ready");
    assert_eq!(target["conditions"][3]["status"], "True", "{target}");
    assert_eq!(target["tools"], 3);

    let v2 = publisher.publish(compiled("http://b")).unwrap();
    let f = next_frame().await;
    assert_eq!((f.kind, f.version), (FrameKind::Snapshot, Some(v2)));
    assert_ne!(f.hash.as_deref(), Some(h1.as_str()));
    // Until it reports the new hash, the dataplane no longer counts as programmed.
    assert_eq!(fleet.programmed(f.hash.as_deref().unwrap()).applied, 0);

    drop(body);
    // A closed stream is no longer live, but the dataplane may still serve what it applied:
    // it stays counted for a while, and on the newer snapshot it is stale, not programmed.
    assert!(fleet.view().iter().all(|d| !d.connected), "no live stream");
    let newest = fleet.programmed(f.hash.as_deref().unwrap());
    assert_eq!((newest.applied, newest.connected), (0, 1));
    assert_eq!(newest.stale.len(), 1);
}
