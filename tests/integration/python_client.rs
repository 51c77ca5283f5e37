//! A client that knows only the protos: Python stubs generated from
//! `proto/` at test time (grpcio-tools) drive LiveChat through the gateway's
//! gRPC API and through gRPC-Web over plain HTTP/1.1, in the same channel as
//! a WebSocket client, and run a copilot query with its callbacks. The
//! scripts are tests/clients/python/livechat_client.py and copilot_client.py.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::harness::{self, Chat};

/// Generates the Python stubs of `relaymesh.client.v1`; None when Python's
/// grpcio-tools is missing (CI installs it and sets
/// RELAYMESH_REQUIRE_PYTHON_CLIENT, which turns a skip into a failure).
fn generate_stubs() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("relaymesh-py-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&out).unwrap();
    let protos: Vec<PathBuf> = std::fs::read_dir(root.join("proto/relaymesh/client/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    let generated = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos)
        .status();
    match generated {
        Ok(s) if s.success() => Some(out),
        other => {
            assert!(
                std::env::var_os("RELAYMESH_REQUIRE_PYTHON_CLIENT").is_none(),
                "python3 -m grpc_tools.protoc failed ({other:?}); install grpcio-tools"
            );
            eprintln!("skipped: python3 with grpcio-tools is not installed");
            None
        }
    }
}

#[tokio::test]
async fn a_python_client_generated_from_the_protos_chats_with_a_websocket_client() {
    let Some(stubs) = generate_stubs() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python/livechat_client.py");
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let mut ws = Chat::ready(mesh.gateway_addr, "ws-user").await;
        ws.ok(10, json!({"channel_id": "py", "floor": "exclusive"})).await;
        ws.ok(11, json!({"channel_id": "py", "ssrc": 100})).await;

        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(mesh.gateway_addr.to_string())
            .arg(harness::token("py-user", 600))
            .args(["py-user", "py", "200"])
            .env("PYTHONPATH", &stubs)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

        // The socket sees the Python client join, take the floor and talk,
        // then answers it.
        let joined = ws.event(100).await;
        assert_eq!(
            (joined["d"]["type"].as_str(), joined["d"]["user_id"].as_str()),
            (Some("join"), Some("py-user"))
        );
        let floor = ws.event(102).await;
        assert_eq!(floor["d"]["holder_id"], "py-user", "{backend:?}");
        loop {
            let m = ws.event(101).await;
            if m["d"]["user_id"] == "py-user" {
                assert_eq!(m["d"]["content"], "hello from python");
                break;
            }
        }
        ws.ok(20, json!({"channel_id": "py", "content": "hello from rust"}))
            .await;

        let mut seen: Vec<Value> = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(harness::WAIT * 4, lines.next_line())
            .await
            .unwrap()
        {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            let done = v["step"] == "done";
            seen.push(v);
            if done {
                break;
            }
        }
        let step = |name: &str| {
            seen.iter()
                .find(|v| v["step"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{backend:?}: no step {name} in {seen:?}"))
        };
        assert_eq!(step("ready")["user_id"], "py-user");
        assert_eq!(step("joined")["members"], json!(["py-user", "ws-user"]));
        assert_eq!(step("floor")["holder"], "py-user");
        assert_eq!(step("sent")["kind"], "ack");
        assert_eq!(step("received")["content"], "hello from rust");
        let error = step("error");
        assert_eq!(
            (error["kind"].as_str(), error["code"].as_str(), error["number"].as_u64()),
            (Some("error"), Some("LIVECHAT_ERROR_CODE_CHANNEL_NOT_FOUND"), Some(2000)),
            "the refusal arrives as the proto enum value"
        );
        // gRPC-Web over plain HTTP/1.1: Open streams events, Send queues a request.
        let open = step("web-open");
        assert_eq!(open["status"], 200);
        assert!(
            open["content_type"]
                .as_str()
                .unwrap_or("")
                .starts_with("application/grpc-web"),
            "{open}"
        );
        assert_eq!(
            step("web-opened"),
            json!({"step": "web-opened", "session": true, "first": "hello", "second": "ready"})
        );
        assert_eq!(step("web-ack")["nonce"], "web1");
        step("done");
        let status = child.wait().await.unwrap();
        assert!(status.success(), "{backend:?}: the script exited {status}");
        mesh.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(stubs);
}

/// Runs one of the Python client scripts with `args`; returns its report
/// lines up to `done`, and checks it exited well.
async fn run_script(stubs: &Path, script: &str, args: &[String]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/python")
        .join(script);
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .env("PYTHONPATH", stubs)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen: Vec<Value> = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(harness::WAIT * 4, lines.next_line())
        .await
        .expect("a line in time")
    {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let done = v["step"] == "done";
        seen.push(v);
        if done {
            break;
        }
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{script:?} exited {status}: {seen:?}");
    seen
}

#[tokio::test]
async fn a_python_client_generated_from_the_protos_answers_copilot_callbacks() {
    let Some(stubs) = generate_stubs() else { return };
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let args = [mesh.gateway_addr.to_string(), harness::token("py-copilot", 600)];
        let seen = run_script(&stubs, "copilot_client.py", &args).await;
        let step = |name: &str| {
            seen.iter()
                .find(|v| v["step"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{backend:?}: no step {name} in {seen:?}"))
        };
        assert_eq!(
            step("connected"),
            json!({"step": "connected", "kind": "connected", "user_id": "py-copilot"})
        );
        let response = step("response");
        assert_eq!(response["kind"], "response", "{backend:?}: {response}");
        assert_eq!(response["request_id"], "py-q1");
        assert_eq!(response["callbacks"], json!(["request_available_data", "request_api"]));
        assert_eq!(response["data"]["cache"], "hit");
        // protobuf's numbers are doubles: 3 comes back as 3.0.
        assert_eq!(response["data"]["apiResult"]["rows"].as_f64(), Some(3.0));
        assert_eq!(response["remaining"], 9);
        let error = step("error");
        assert_eq!(
            (error["kind"].as_str(), error["code"].as_str()),
            (Some("error"), Some("COPILOT_ERROR_CODE_UNKNOWN_REQUEST_ID")),
            "{backend:?}: the refusal arrives as the proto enum value"
        );
        mesh.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(stubs);
}
