//! Test harness: spawning the fixture, server-everything and the Python and TypeScript SDK
//! clients, bounded and on loopback; the cached, concurrency-safe installs (Python venv, npm
//! packages, helm/kubectl/lua) those peers need.

pub mod balancer;
pub mod browser;
pub mod byte_relay;
pub mod cache;
pub mod conformance;
pub mod connect_flow;
pub mod console_web;
pub mod controller_bin;
pub mod controller_process;
pub mod dataplane_process;
pub mod error;
pub mod everything;
pub mod fixture_process;
pub mod gateway;
pub mod http;
pub mod k8s_tools;
pub mod kube_cluster;
pub mod load;
pub mod manifests;
pub mod mcp_remote;
pub mod net;
pub mod node;
pub mod oauth_upstream;
pub mod oidc;
pub mod otlp;
pub mod paths;
pub mod postgres;
pub mod process;
pub mod py_ops;
pub mod py_server;
pub mod python;
pub mod raw_session;
pub mod render;
pub mod sse;
pub mod ts_server;
pub mod typescript;

pub use balancer::RoundRobin;
pub use controller_bin::controller_bin;
pub use dataplane_process::{DataplaneProcess, dataplane_bin};
pub use error::{HarnessError, Result};
pub use everything::{EverythingMode, SERVER_EVERYTHING_SPEC, ServerEverything};
pub use fixture_process::{FixtureProcess, StdioFixture, fixture_bin};
pub use gateway::{GatewayBuilder, PolicyDoc, TestGateway};
pub use http::http_client;
pub use k8s_tools::{K8sTools, k8s_tools};
pub use kube_cluster::KubeCluster;
pub use node::npm_package;
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::TestPostgres;
pub use process::{CommandLine, ManagedChild};
pub use python::{
    MCP_PIN, PyClient, PyTransport, python_venv, run_python_client, run_python_script,
};
pub use raw_session::{RawInit, RawSession};
pub use sse::{SseEvent, SseReader};
pub use ts_server::TsServer;
pub use typescript::{TS_SDK_SPEC, TsClient};
