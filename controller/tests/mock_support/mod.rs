//! Plumbing shared by the tests that drive a reconciler against kube-rs's mock API server
//! (`tower_test::mock`): the client, expecting one exact call, answering it, expecting silence.
#![allow(dead_code)] // each test binary uses its own part of it

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

pub fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

pub async fn expect(
    h: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .unwrap_or_else(|| panic!("client gone before {method} {path}"));
    assert_eq!(
        (req.method().clone(), req.uri().to_string()),
        (method, path.to_owned())
    );
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json")
    };
    (body, send)
}

pub fn respond(send: SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response"),
    );
}

pub fn not_found(send: SendResponse<Response<Body>>) {
    respond(
        send,
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    );
}

pub async fn expect_quiet(h: &mut ApiHandle) {
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_millis(300), h.next_request()).await
    {
        panic!("unexpected call {} {}", req.method(), req.uri());
    }
}

pub const SSA: &str = "?&force=true&fieldManager=reflow-controller";
pub const CORE: &str = "/api/v1/namespaces/team";
pub const INSTANCES: &str = "/apis/mcp.reflow.io/v1alpha1/namespaces/team/mcpinstances";
