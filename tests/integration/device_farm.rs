//! The device farm end to end (seeds 000 and 002): real node agents with
//! simulated devices on real WebSockets, the hub, the scheduler with its
//! store, the operator HTTP API.

use std::net::SocketAddr;
use std::time::Duration;

use relaymesh_node_agent::AgentConfig;
use relaymesh_wire::node::{NodeKey, signature};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::harness::{self, Backend, Client, NODE_AGENT_SECRET, NODE_SECRET, operator_call};

fn mesh_flags() -> Vec<&'static str> {
    vec![
        "--node-shared-secret",
        NODE_SECRET,
        "--node-agent-shared-secret",
        NODE_AGENT_SECRET,
        "--timeout-sweep-ms",
        "50",
        "--timeout-grace-ms",
        "200",
    ]
}

/// Starts a simulated node agent against `gateway`; stops with `stop`.
fn agent(gateway: SocketAddr, node_id: &str, extra: &[&str], stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
    let url = format!("ws://{gateway}/ws/node");
    let mut args = vec![
        "node-agent",
        "--node-id",
        node_id,
        "--node-secret",
        NODE_SECRET,
        "--vultr-url",
        &url,
        "--driver",
        "sim",
        "--heartbeat-interval-ms",
        "500",
        "--reconnect-min-ms",
        "50",
        "--reconnect-max-ms",
        "200",
        "--sim-task-ms",
        "20",
        "--sim-jitter-ms",
        "20",
        "--shutdown-grace-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    let config = AgentConfig::try_parse_from(args).expect("agent flags");
    let stop = stop.clone();
    tokio::spawn(async move {
        let _ = relaymesh_node_agent::run(config, stop).await;
    })
}

async fn wait_for_node(gw: SocketAddr, node_id: &str, devices: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = operator_call(gw, "GET", "/api/v1/nodes", None).await;
        assert_eq!(status, 200, "{body}");
        let ready = body["nodes"].as_array().unwrap().iter().any(|n| {
            n["node_id"] == node_id && n["connected"] == true && n["devices"].as_array().unwrap().len() == devices
        });
        if ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node_id} never registered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn workflow(gw: SocketAddr, id: &str) {
    let body = json!({"workflow_id": id, "name": "watch", "recipe": {"command_type": "WATCH_VIDEO", "params": {"video_id": "dQw4w9WgXcQ"}}});
    let (status, w) = operator_call(gw, "POST", "/api/v1/workflows", Some(body)).await;
    assert_eq!(status, 201, "{w}");
}

async fn run(gw: SocketAddr, body: Value) -> String {
    let (status, run) = operator_call(gw, "POST", "/api/v1/runs", Some(body)).await;
    assert_eq!(status, 201, "{run}");
    run["run_id"].as_str().unwrap().to_owned()
}

/// Polls the run until finished; asserts the node never used more than
/// `max_slots` while polling.
async fn finished(gw: SocketAddr, run_id: &str, max_slots: u64, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, nodes) = operator_call(gw, "GET", "/api/v1/nodes", None).await;
        for n in nodes["nodes"].as_array().unwrap() {
            assert!(n["slots_in_use"].as_u64().unwrap() <= max_slots, "slots exceeded: {n}");
        }
        let (status, r) = operator_call(gw, "GET", &format!("/api/v1/runs/{run_id}"), None).await;
        assert_eq!(status, 200, "{r}");
        if r["status"] == "finished" {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run_id} did not finish: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn five_hundred_tasks_on_a_hundred_devices_finish_exactly_once_within_twenty_slots() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &mesh_flags()).await;
        let gw = mesh.gateway_addr;
        let stop = CancellationToken::new();
        let node = agent(gw, "node-A1", &[], &stop);
        wait_for_node(gw, "node-A1", 100).await;
        workflow(gw, "watch").await;
        let mut runs = Vec::new();
        for _ in 0..5 {
            runs.push(run(gw, json!({"workflow_id": "watch", "nodes": ["node-A1"]})).await);
        }
        let mut seen = std::collections::HashSet::new();
        for run_id in &runs {
            let r = finished(gw, run_id, 20, Duration::from_secs(60)).await;
            let tasks = r["tasks"].as_array().unwrap();
            assert_eq!(tasks.len(), 100, "{backend:?}");
            for t in tasks {
                assert_eq!(t["state"], "SUCCEEDED", "{backend:?}: {t}");
                assert_eq!(t["attempts"], 1, "{backend:?}: dispatched exactly once: {t}");
                assert!(seen.insert(t["task_id"].as_str().unwrap().to_owned()));
            }
        }
        assert_eq!(seen.len(), 500);
        stop.cancel();
        node.await.unwrap();
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_device_that_hangs_times_out_and_the_run_goes_on() {
    let mesh = harness::start(&Backend::Memory, &mesh_flags()).await;
    let gw = mesh.gateway_addr;
    let stop = CancellationToken::new();
    let node = agent(
        gw,
        "node-H",
        &["--sim-devices", "4", "--sim-hang-serials", "SIM-0002"],
        &stop,
    );
    wait_for_node(gw, "node-H", 4).await;
    workflow(gw, "watch").await;
    let run_id = run(
        gw,
        json!({"workflow_id": "watch", "nodes": ["node-H"], "task_timeout_ms": 1000}),
    )
    .await;
    let r = finished(gw, &run_id, 20, Duration::from_secs(20)).await;
    for t in r["tasks"].as_array().unwrap() {
        let want = if t["device_serial"] == "SIM-0002" {
            "TIMED_OUT"
        } else {
            "SUCCEEDED"
        };
        assert_eq!(t["state"], want, "fail-soft: only the hung device fails: {t}");
    }
    stop.cancel();
    node.await.unwrap();
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hub_restart_mid_run_loses_no_task() {
    let mut mesh = harness::start(&Backend::Memory, &mesh_flags()).await;
    // The node talks to a replica on a fixed port, which we restart.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hub = mesh.add_gateway(port, None).await.unwrap();
    let api = mesh.gateway_addr;
    let stop = CancellationToken::new();
    let node = agent(hub, "node-R", &["--sim-devices", "40", "--sim-task-ms", "150"], &stop);
    wait_for_node(api, "node-R", 40).await;
    workflow(api, "watch").await;
    let run_id = run(api, json!({"workflow_id": "watch", "nodes": ["node-R"]})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(mesh.stop_gateway(hub));
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.add_gateway(port, None).await.unwrap();

    let r = finished(api, &run_id, 20, Duration::from_secs(30)).await;
    let tasks = r["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 40);
    assert!(tasks.iter().all(|t| t["state"] == "SUCCEEDED"), "{r}");
    stop.cancel();
    node.await.unwrap();
    mesh.shutdown().await.unwrap();
}

fn signed(frame: Value) -> String {
    signature::signed_frame(&frame.to_string(), &NodeKey::from_secret(NODE_SECRET)).unwrap()
}

fn hello(node: &str, message_id: &str) -> Value {
    json!({
        "version": "1.0",
        "timestamp": relaymesh_wire::node::rfc3339_millis_now(),
        "message_id": message_id,
        "type": "HELLO",
        "node_id": node,
        "payload": {"devices": ["D1"], "slots": 20}
    })
}

#[tokio::test]
async fn forged_frames_are_refused_and_the_node_cannot_hold_the_socket() {
    let mesh = harness::start(&Backend::Memory, &mesh_flags()).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/node").await;
    let mut forged = hello("node-F", "m-1");
    forged["signature"] = json!("00".repeat(32));
    c.send_json(forged).await;
    let err = c.recv().await;
    assert_eq!(
        (err["type"].as_str(), err["payload"]["code"].as_str()),
        (Some("ERROR"), Some("INVALID_SIGNATURE"))
    );
    assert_eq!(c.close_code().await, 4001);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn replayed_frames_are_refused() {
    let mesh = harness::start(&Backend::Memory, &mesh_flags()).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/node").await;
    let frame = signed(hello("node-P", "m-once"));
    c.send_text(&frame).await;
    let ack = c.recv().await;
    assert_eq!(ack["type"], "HELLO_ACK", "{ack}");
    assert!(
        signature::verify(&ack.to_string(), &NodeKey::from_secret(NODE_SECRET)).is_ok(),
        "hub frames are signed"
    );
    c.send_text(&frame).await;
    let err = c.recv().await;
    assert_eq!(
        (err["type"].as_str(), err["payload"]["code"].as_str()),
        (Some("ERROR"), Some("REPLAYED")),
        "{err}"
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_and_out_of_order_frames_get_errors_and_the_socket_stays() {
    let mesh = harness::start(&Backend::Memory, &mesh_flags()).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/node").await;
    c.send_text("{\"type\":").await;
    assert_eq!(c.recv().await["payload"]["code"], "INVALID_FRAME");
    let mut hb = hello("node-O", "m-hb");
    hb["type"] = json!("HEARTBEAT");
    hb["payload"] = json!({"status": "READY"});
    c.send_text(&signed(hb)).await;
    assert_eq!(c.recv().await["payload"]["code"], "NOT_REGISTERED");
    c.send_text(&signed(hello("node-O", "m-hello"))).await;
    assert_eq!(c.recv().await["type"], "HELLO_ACK");
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn runs_need_an_operator_and_unknown_command_types_are_refused_at_creation() {
    let mesh = harness::start(&Backend::Memory, &mesh_flags()).await;
    let gw = mesh.gateway_addr;
    let (status, _) = harness::http(gw, "POST", "/api/v1/runs", &[], b"{}").await;
    assert_eq!(status, 401, "no token");
    let user = format!("Bearer {}", harness::token("not-an-operator", 600));
    let (status, _) = harness::http(gw, "GET", "/api/v1/nodes", &[("Authorization", &user)], b"").await;
    assert_eq!(status, 403, "a token without the operator role");
    let bad = json!({"workflow_id": "w", "recipe": {"command_type": "FORMAT_DISK"}});
    let (status, body) = operator_call(gw, "POST", "/api/v1/workflows", Some(bad)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_command_type")),
        "{body}"
    );
    let (status, _) = operator_call(
        gw,
        "POST",
        "/api/v1/runs",
        Some(json!({"workflow_id": "nope", "nodes": ["x"]})),
    )
    .await;
    assert_eq!(status, 404);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn artifacts_are_stored_under_the_seed_path_with_the_node_secret() {
    let dir = std::env::temp_dir().join(format!("rm-artifacts-{}", uuid::Uuid::new_v4().simple()));
    let dir_s = dir.to_string_lossy().into_owned();
    let mut flags = mesh_flags();
    flags.extend_from_slice(&["--artifact-dir", &dir_s]);
    let mesh = harness::start(&Backend::Memory, &flags).await;
    let path =
        "/api/v1/nodes/node-A1/artifacts?device_serial=ABC123&run_id=run-1&video_id=dQw4w9WgXcQ&timestamp=1739012345";
    let (status, _) = harness::http(mesh.gateway_addr, "POST", path, &[("X-Node-Auth", "wrong")], b"png").await;
    assert_eq!(status, 401);
    let (status, body) = harness::http(
        mesh.gateway_addr,
        "POST",
        path,
        &[("X-Node-Auth", NODE_AGENT_SECRET)],
        b"\x89PNG",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["path"], "dQw4w9WgXcQ/node-A1/ABC123/run-1/1739012345.png");
    assert_eq!(
        std::fs::read(dir.join("dQw4w9WgXcQ/node-A1/ABC123/run-1/1739012345.png")).unwrap(),
        b"\x89PNG"
    );
    let traversal = "/api/v1/nodes/node-A1/artifacts?device_serial=..&run_id=r&video_id=v&timestamp=1";
    let (status, _) = harness::http(
        mesh.gateway_addr,
        "POST",
        traversal,
        &[("X-Node-Auth", NODE_AGENT_SECRET)],
        b"x",
    )
    .await;
    assert_eq!(status, 400, "path segments are validated");
    let _ = std::fs::remove_dir_all(&dir);
    mesh.shutdown().await.unwrap();
}

/// A signed frame from `node` with a fresh message_id.
fn node_frame(node: &str, kind: &str, payload: Value) -> String {
    let mut f = hello(node, &uuid::Uuid::new_v4().to_string());
    f["type"] = json!(kind);
    f["payload"] = payload;
    signed(f)
}

/// The next frame of `kind` on a raw node socket, skipping others.
async fn next_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let f = c.recv().await;
        if f["type"] == kind {
            return f;
        }
    }
}

/// The state and attempts of the run's only task.
async fn only_task(gw: SocketAddr, run_id: &str) -> (String, u64) {
    let (_, r) = operator_call(gw, "GET", &format!("/api/v1/runs/{run_id}"), None).await;
    let t = &r["tasks"][0];
    (
        t["state"].as_str().unwrap_or_default().to_owned(),
        t["attempts"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn commands_go_out_only_after_ready_and_a_refused_one_is_requeued_at_once() {
    let mesh = harness::start(&Backend::Memory, &mesh_flags()).await;
    let gw = mesh.gateway_addr;
    let mut c = Client::connect(gw, "/ws/node").await;
    c.send_text(&signed(hello("node-Q", "m-hello-q"))).await;
    assert_eq!(c.recv().await["type"], "HELLO_ACK");
    workflow(gw, "watch").await;
    // A deadline far away: whatever happens below is not a timeout.
    let run_id = run(
        gw,
        json!({"workflow_id": "watch", "nodes": ["node-Q"], "task_timeout_ms": 600000}),
    )
    .await;

    // HELLO alone asks for nothing (a node may still be booting its devices).
    let early = c.try_recv(Duration::from_millis(700)).await;
    assert!(early.is_none(), "nothing before READY: {early:?}");
    c.send_text(&node_frame(
        "node-Q",
        "HEARTBEAT",
        json!({"status": "READY", "free_slots": 20, "running": []}),
    ))
    .await;
    let cmd = next_of(&mut c, "COMMAND").await;
    let command_id = cmd["payload"]["command_id"].as_str().unwrap().to_owned();
    assert_eq!(cmd["payload"]["device_serial"], "D1");
    assert_eq!(cmd["payload"]["command_type"], "WATCH_VIDEO");
    assert_eq!(cmd["payload"]["params"]["video_id"], "dQw4w9WgXcQ", "{cmd}");
    assert_eq!(only_task(gw, &run_id).await, ("RUNNING".to_owned(), 1));

    // The node refuses it, naming it: back in the queue now, not at its deadline.
    c.send_text(&node_frame(
        "node-Q",
        "ERROR",
        json!({"code": "DEVICE_BUSY", "message": "busy", "command_id": command_id}),
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while only_task(gw, &run_id).await.0 != "QUEUED" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused task was not re-queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sent again once the node says READY again, and it completes once.
    c.send_text(&node_frame(
        "node-Q",
        "HEARTBEAT",
        json!({"status": "READY", "free_slots": 20, "running": []}),
    ))
    .await;
    let again = next_of(&mut c, "COMMAND").await;
    assert_eq!(again["payload"]["command_id"], command_id.as_str());
    c.send_text(&node_frame(
        "node-Q",
        "RESULT",
        json!({"command_id": command_id, "run_id": run_id, "device_serial": "D1", "status": "SUCCESS",
               "result": {"watched_s": 30}, "started_at": 1, "finished_at": 2}),
    ))
    .await;
    let ack = next_of(&mut c, "ACK").await;
    assert_eq!(ack["payload"]["command_id"], command_id.as_str());
    let r = finished(gw, &run_id, 20, Duration::from_secs(10)).await;
    assert_eq!(r["tasks"][0]["state"], "SUCCEEDED");
    assert_eq!(r["tasks"][0]["attempts"], 2, "dispatched twice, ran once: {r}");
    assert_eq!(r["tasks"][0]["result"]["watched_s"], 30, "{r}");
    mesh.shutdown().await.unwrap();
}
